"""Metrics as plug-ins (tritonbench's registered metrics): each module turns a case into rows.

A metric is a `Metric` (base.py): its name in a suite's `metrics:`, whether it runs the case's timed
workload, and `rows(ctx) -> list[MetricRow]`. attnbench.execute runs the suite's metrics for each case,
in the row order of `attnbench.execute.METRICS`:
  latency.py        latency statistics (ms), throughput, tokens_per_s (+ GPU clocks/power after the repeats)
  memory.py         peak_memory
  cost.py           `flops`: analytic FLOPs and bytes, their achieved rates, counted FLOPs
  peak_fraction.py  frac_flops / frac_bandwidth of the achieved rates, against the measured peaks
  rank.py           kv_rank, kv_erank, out_rank, out_erank (maths in attnbench.measure.rank)
  accuracy.py       ImageNet top1/top5 of a checkpoint, beside the paper's reported numbers
"""
