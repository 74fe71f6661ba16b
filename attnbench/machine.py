"""What identifies the machine and software stack a run measured on, apart from the project's commit.

A fingerprint (attnbench.measure.env.fingerprint, kept per env_id in FILE.env.json) records the hardware,
driver and library versions, the settings that change numbers, the project's git commit and a few volatile
readings. `env_id` hashes all of it but the volatile readings, so every commit is a new env_id. `machine_id`
hashes what must match for two runs to be compared over time: everything but the volatile readings, the
project's commit (PROJECT_FIELDS) and which host of a kind ran it (PLACEMENT_FIELDS: hostname, Ray node,
visible GPU index). Two runs with one machine_id differ only in the code measured (and the moment), which is
what `attnbench history` varies. This module imports no torch: results files are read without it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

VOLATILE = ("load_average_1m", "free_cores")  # readings of the moment, never part of an id
PROJECT_FIELDS = ("git_commit", "git_dirty", "git_commit_date")  # the code measured, not the machine
PLACEMENT_FIELDS = ("hostname", "ray_node_id", "cuda_visible_devices")  # which host of a kind, not what kind
DERIVED_FIELDS = ("machine_id", "env_id")  # ids made from the rest of a fingerprint (`env` prints them with it)


def short_hash(fields: Mapping[str, Any]) -> str:
    """10 hex digits of the SHA-1 of `fields` as sorted JSON."""
    blob = json.dumps(dict(fields), sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:10]


def machine_id(fp: Mapping[str, Any]) -> str:
    """The hash of a fingerprint without its volatile readings, project commit and placement (module docstring).
    A fingerprint's own `machine_id` is not used: it is recomputed from the rest, so files written before the
    field existed get the same id."""
    skip = {*VOLATILE, *PROJECT_FIELDS, *PLACEMENT_FIELDS, *DERIVED_FIELDS}
    return short_hash({k: v for k, v in fp.items() if k not in skip})
