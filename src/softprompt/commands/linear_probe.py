"""`softprompt linear-probe CONFIG [overrides]`: the linear-probe baseline of a CLIP run."""

from __future__ import annotations

import argparse
import json
import sys


def add_command(sub) -> None:
    p = sub.add_parser(
        "linear-probe",
        help="CLIP / SigLIP: fit logistic regression on the frozen image features (C chosen "
        "on validation) and save it as an adapter under <training.output_dir>/best",
    )
    p.add_argument("config", help="YAML config file (the run's: model, data, task)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    from softprompt.config.run import load_config
    from softprompt.workflows.linear_probe import linear_probe

    config = load_config(args.config, args.overrides)
    results = linear_probe(config)
    print(json.dumps(results, indent=2))
    print(f"wrote the linear probe to {config.training.output_dir}/best", file=sys.stderr)
    return 0
