"""Command line: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import warnings
from pathlib import Path

from softprompt.commands import add_commands

EXIT_USAGE = 2


def _setup_logging(verbose: bool) -> None:
    from softprompt.train.launch import is_main_process

    level = logging.DEBUG if verbose else logging.INFO
    if not is_main_process():
        level = logging.WARNING  # one copy of the progress log, from the first process
    logging.basicConfig(
        level=level,
        format="%(asctime)s - %(levelname)s - %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("softprompt").setLevel(level)
    for noisy in ("transformers", "accelerate", "peft", "datasets", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="transformers")
    warnings.filterwarnings("ignore", category=FutureWarning)


def _relaunch_under_accelerate(args: argparse.Namespace) -> int:
    from softprompt.config.run import load_config
    from softprompt.train.launch import accelerate_launch_command

    load_config(args.config, args.overrides)  # a bad config fails here, not N times
    train_args = ["-v"] if args.verbose else []
    train_args += ["train", args.config, *args.overrides]
    if args.resume:
        train_args += ["--resume", args.resume]
    if args.no_progress:
        train_args.append("--no-progress")
    command = accelerate_launch_command(train_args, args.num_processes, args.accelerate_config)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)  # the launcher takes over this process (and Ctrl-C)
    return 0  # not reached


def _cmd_train(args: argparse.Namespace) -> int:
    from softprompt.config.run import load_config
    from softprompt.train.launch import is_main_process

    if args.launcher == "accelerate":
        if args.num_processes is not None and args.num_processes < 1:
            print(f"--num-processes must be at least 1 (got {args.num_processes})", file=sys.stderr)
            return EXIT_USAGE
        if args.accelerate_config is not None and not Path(args.accelerate_config).is_file():
            print(f"accelerate config not found: {args.accelerate_config}", file=sys.stderr)
            return EXIT_USAGE
        return _relaunch_under_accelerate(args)
    if args.num_processes is not None or args.accelerate_config is not None:
        print("--num-processes/--accelerate-config need --launcher accelerate", file=sys.stderr)
        return EXIT_USAGE
    from softprompt.train.loop import train

    config = load_config(args.config, args.overrides)
    results = train(config, resume=args.resume, progress=not args.no_progress)
    if is_main_process():
        summary = {k: v for k, v in results.items() if k != "evaluations"}
        print(json.dumps(summary, indent=2))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from softprompt.config.run import load_config
    from softprompt.inference.eval_run import run_evaluation

    if args.zero_shot:
        from softprompt.commands.baseline import zero_shot_eval

        return zero_shot_eval(args)
    config = load_config(args.config, args.overrides)
    results = run_evaluation(
        config,
        prompt_dir=_prompt_path(args),
        model=args.model,
        splits=(args.split,) if args.split else ("val", "test"),
        predict=not args.loss_only,
        progress=not args.no_progress,
        predictions_path=args.predictions,
        adapters=_adapter_switches(args.adapter),
    )
    if not any(split in results for split in ("val", "test")):
        print("no labelled data: set data.val_test_path or data.test_path", file=sys.stderr)
        return EXIT_USAGE
    text = json.dumps(results, indent=2)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text, encoding="utf-8")
    print(text)
    return 0


def _prompt_path(args: argparse.Namespace) -> str | None:
    """--prompt is a directory path, or with --prompts-dir a name resolved safely under it."""
    if args.prompt is None or args.prompts_dir is None:
        return args.prompt
    from softprompt.paths import resolve_prompt_name

    return str(resolve_prompt_name(args.prompts_dir, args.prompt))


def _adapter_switches(values: list[str] | None) -> dict[str, bool]:
    """`--adapter lora=off --adapter prompt=on` -> {"lora": False, "prompt": True}."""
    from softprompt.config.run import ConfigError

    states = {}
    for value in values or []:
        name, _, state = value.partition("=")
        if state.lower() not in ("on", "off", "true", "false", "1", "0"):
            raise ConfigError(f"--adapter {value!r}: expected NAME=on or NAME=off")
        states[name.strip()] = state.lower() in ("on", "true", "1")
    return states


def _cmd_predict(args: argparse.Namespace) -> int:
    from softprompt.inference.loaded import LoadedModel
    from softprompt.inference.predict_io import summarize, write_records

    args.prompt = _prompt_path(args)
    if args.prompt is None and args.model is None:
        print("predict needs --prompt DIR (or --model for the bare model)", file=sys.stderr)
        return EXIT_USAGE
    if args.prompt is None:
        loaded = LoadedModel.bare_text_model(args.model, args.max_new_tokens)
    else:
        loaded = LoadedModel.from_bundle(
            args.prompt, model=args.model, max_new_tokens=args.max_new_tokens
        )
    loaded.set_adapters(_adapter_switches(args.adapter))
    if args.task is not None:
        loaded.select_task(args.task, args.max_new_tokens)
    if loaded.task_names() and args.task is None:
        records = _predict_per_record_task(loaded, args)
    else:
        records = _predict_inputs(loaded, args, args.input)
    if records is None:
        return EXIT_USAGE
    if args.output:
        write_records(records, args.output)
        print(f"wrote {len(records)} predictions to {args.output}", file=sys.stderr)
    else:
        for record in records:
            print(json.dumps(record, ensure_ascii=False))
    if loaded.task.type != "text2text":
        print(f"summary: {json.dumps(summarize(records))}", file=sys.stderr)
    return 0


def _predict_inputs(loaded, args: argparse.Namespace, input_path: str | None) -> list | None:
    """Records for the inputs the flags name (None: the flags do not fit the task)."""
    from softprompt.data.records import TextExample
    from softprompt.inference.predict_io import image_inputs, read_inputs

    images = loaded.task.type != "text2text"
    if images:
        examples = image_inputs(
            args.image, args.image_dir, input_path, args.question, task_type=loaded.task.type
        )
    elif args.image or args.image_dir:
        print("this prompt was trained for text; give --text or --input", file=sys.stderr)
        return None
    elif args.text is not None:
        examples = [
            TextExample(id=str(i), input=loaded.apply_template(t)) for i, t in enumerate(args.text)
        ]
    elif input_path is not None:
        field = args.input_field or loaded.task_record.get("input_field", "input")
        examples = read_inputs(input_path, field, loaded.task_record.get("template"))
    else:
        print("predict needs --text or --input", file=sys.stderr)
        return None
    records = loaded.predict(examples, args.batch_size, progress=not args.no_progress)
    if args.text is not None and not images:
        for record, text in zip(records, args.text, strict=True):
            record["input"] = text
    return records


def _predict_per_record_task(loaded, args: argparse.Namespace) -> list | None:
    """A bank without --task: each --input record names its task (`task` field)."""
    import tempfile

    from softprompt.inference.predict_io import split_by_task

    names = loaded.task_names()
    if args.input is None:
        print(
            f"this prompt bank has tasks {', '.join(names)}: pass --task NAME, or --input "
            "records with a 'task' field",
            file=sys.stderr,
        )
        return None
    with tempfile.TemporaryDirectory() as scratch:
        order, files = split_by_task(args.input, names, Path(scratch))
        answered = {}
        for name, path in files.items():
            loaded.select_task(name, args.max_new_tokens)
            records = _predict_inputs(loaded, args, str(path))
            if records is None:
                return None
            answered[name] = iter([{"task": name, **r} for r in records])
    return [next(answered[name]) for name in order]


def _cmd_export(args: argparse.Namespace) -> int:
    from softprompt.workflows.export import export_merged

    if not args.merge:
        print("export writes merged models only for now: pass --merge", file=sys.stderr)
        return EXIT_USAGE
    path = export_merged(args.bundle, args.output, model=args.model)
    print(f"wrote merged model to {path}", file=sys.stderr)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from softprompt.config.run import load_config
    from softprompt.workflows.compare import compare, markdown, parse_methods

    config = load_config(args.config, args.overrides)  # a bad config fails here, once
    out = Path(args.output_dir or Path(config.training.output_dir) / "compare")
    rows = compare(args.config, args.overrides, parse_methods(args.methods), out)
    print(markdown(rows))
    print(f"wrote {out / 'compare.md'} and {out / 'compare.json'}", file=sys.stderr)
    return 0


def _add_adapter_switch(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--adapter",
        action="append",
        metavar="NAME=on|off",
        help="switch an adapter of the bundle on or off (prompt, lora), e.g. --adapter "
        "prompt=off; repeatable; no reload, no retraining",
    )


def _add_prompts_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--prompts-dir",
        help="folder of prompts; --prompt is then a name inside it (e.g. my_run/best), "
        "refused if it would lead outside the folder",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="softprompt", description="Soft prompts for frozen text and vision-language models."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a soft prompt from a YAML config")
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.add_argument(
        "--resume", help="checkpoint directory to continue from, or 'auto' for the newest"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--launcher",
        choices=["accelerate"],
        help="re-run this command under `accelerate launch`: data-parallel processes",
    )
    p.add_argument(
        "--num-processes", type=int, help="with --launcher: processes (default: one per GPU)"
    )
    p.add_argument(
        "--accelerate-config",
        help="with --launcher: an accelerate config file (see configs/accelerate/)",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="evaluate a prompt (or the bare model) on the config's data")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument(
        "--prompt", help="prompt directory (RUN/best, RUN/checkpoint-N); none = zero-shot"
    )
    _add_prompts_dir(p)
    p.add_argument("--model", help="base model, overriding model.name_or_path")
    p.add_argument("--split", choices=["val", "test"], help="only this split")
    p.add_argument("--output", help="write the metrics JSON here")
    p.add_argument("--predictions", help="write per-example predictions (PATH.<split>.jsonl)")
    p.add_argument("--loss-only", action="store_true", help="skip generation metrics")
    p.add_argument(
        "--zero-shot",
        action="store_true",
        help="the frozen model with the hard prompt only (no --prompt); also saved under "
        "<training.output_dir>/baseline, as `softprompt baseline` does",
    )
    _add_adapter_switch(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_eval)

    _add_predict_command(sub)
    _add_method_commands(sub)
    add_commands(sub)
    return parser


def _add_predict_command(sub) -> None:
    """`predict`: a saved prompt (or bank task) on texts, images or a file of inputs."""
    p = sub.add_parser("predict", help="predict with a saved prompt (text or images)")
    # Seed scripts spell these --model_path / --image_path / --image_dir / --output_file.
    p.add_argument("--prompt", "--model_path", dest="prompt", help="prompt directory")
    _add_prompts_dir(p)
    p.add_argument("--model", help="base model (default: the one recorded in the prompt)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", action="append", help="input text (repeatable)")
    src.add_argument("--input", help="JSONL/JSON/CSV file of inputs (text, or image records)")
    src.add_argument(
        "--image", "--image_path", dest="image", action="append", help="image file (repeatable)"
    )
    src.add_argument("--image-dir", "--image_dir", dest="image_dir", help="folder of images")
    p.add_argument("--question", help="question asked about every image (vqa)")
    p.add_argument("--input-field", help="field holding the text in --input records")
    p.add_argument(
        "--output",
        "--output_file",
        dest="output",
        help="write records here (.jsonl or .json); default stdout",
    )
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--task",
        help="with a multi-task prompt bank: the task (prompt) to use; without it, each "
        "--input record names its own in a 'task' field",
    )
    _add_adapter_switch(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_predict)


def _add_method_commands(sub) -> None:
    """`export` and `compare`: what LoRA / full fine-tuning runs add."""
    p = sub.add_parser("export", help="write a bundle's model with LoRA merged in")
    p.add_argument("bundle", help="adapter bundle (RUN/best)")
    p.add_argument("--merge", action="store_true", help="merge LoRA into the base weights")
    p.add_argument("--output", required=True, help="directory to write")
    p.add_argument("--model", help="base model (default: the one the bundle records)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("compare", help="train one config with several methods; a table")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--methods", default="prompt,lora,prompt+lora,full")
    p.add_argument("--output-dir", help="default: <training.output_dir>/compare")
    p.set_defaults(func=_cmd_compare)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    from softprompt.errors import USER_ERRORS

    try:
        return args.func(args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as stopped:
        # Training has saved a checkpoint by now (see train/interrupt.py); no traceback.
        # 128 + the signal number is what shells report for it (130 for Ctrl-C).
        print("interrupted", file=sys.stderr)
        return 128 + int(getattr(stopped, "signum", signal.SIGINT))


if __name__ == "__main__":
    raise SystemExit(main())
