"""`python -m study.config`: every parameter with its help; `... resolve [PARAMS] [OUT]` writes
the active profile, resolved; `... PARAMS [PROFILE]` prints a profile, resolved."""

import dataclasses
import sys

import yaml

from study.config import describe, load_params, write_resolved

if len(sys.argv) > 1 and sys.argv[1] == "resolve":
    print(write_resolved(*sys.argv[2:4]))
elif len(sys.argv) > 1:
    p = load_params(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
    print(yaml.safe_dump({**p.to_dict(), "placement": dataclasses.asdict(p.placement)},
                         sort_keys=False))  # fmt: skip
else:
    print(describe())
