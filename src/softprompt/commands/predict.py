"""`softprompt predict`: a saved prompt (or bank task) on texts, images or a file of inputs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from softprompt.commands.common import (
    EXIT_USAGE,
    adapter_switches,
    add_adapter_switch,
    add_prompts_dir,
    prompt_path,
)


def add_command(sub) -> None:
    """Add the `predict` sub-command to the CLI's sub-parsers."""
    p = sub.add_parser("predict", help="predict with a saved prompt (text or images)")
    # Seed scripts spell these --model_path / --image_path / --image_dir / --output_file.
    p.add_argument("--prompt", "--model_path", dest="prompt", help="prompt directory")
    add_prompts_dir(p)
    p.add_argument("--model", help="base model (default: the one recorded in the prompt)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", action="append", help="input text (repeatable)")
    src.add_argument("--input", help="JSONL/JSON/CSV file of inputs (text, or image records)")
    src.add_argument(
        "--image", "--image_path", dest="image", action="append", help="image file (repeatable)"
    )
    src.add_argument("--image-dir", "--image_dir", dest="image_dir", help="folder of images")
    p.add_argument("--question", help="question asked about every image (vqa)")
    p.add_argument(
        "--instruction",
        help="with --model and no --prompt: the hard prompt the bare model reads (default: "
        "its task's own, e.g. 'A short caption of the image:')",
    )
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
    add_adapter_switch(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args: argparse.Namespace) -> int:
    from softprompt.inference.loaded import LoadedModel
    from softprompt.inference.predict_io import record_json, summarize, write_records

    args.prompt = prompt_path(args)
    if args.prompt is None and args.model is None:
        print("predict needs --prompt DIR (or --model for the bare model)", file=sys.stderr)
        return EXIT_USAGE
    if args.prompt is None:
        loaded = _bare_model(args)
    elif args.instruction is not None:
        print(
            "--instruction is for the bare model (--model without --prompt); a trained "
            "prompt keeps the hard prompt it was trained with",
            file=sys.stderr,
        )
        return EXIT_USAGE
    else:
        loaded = LoadedModel.from_bundle(
            args.prompt, model=args.model, max_new_tokens=args.max_new_tokens
        )
    loaded.set_adapters(adapter_switches(args.adapter))
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
            print(record_json(record))
    # Every input has one record, so total counts the inputs and errors those unread.
    summary = summarize(records, by_prediction=loaded.task.type != "text2text")
    print(f"summary: {json.dumps(summary)}", file=sys.stderr)
    return 0


def _bare_model(args: argparse.Namespace):
    """The model alone (zero-shot): a vision-language model captions, or answers when
    --question is given or the --input records hold questions."""
    from softprompt.inference.loaded import LoadedModel, zero_shot_task
    from softprompt.inference.predict_io import asks_questions

    question = args.question is not None
    loaded = LoadedModel.bare_model(args.model, args.max_new_tokens, question, args.instruction)
    if loaded.reads_images and not question and args.input and asks_questions(args.input):
        task, _ = zero_shot_task(True, True, args.instruction, args.max_new_tokens)
        loaded.use_task(task)
    return loaded


def _predict_inputs(loaded, args: argparse.Namespace, input_path: str | None) -> list | None:
    """Records for the inputs the flags name (None: the flags do not fit the task)."""
    examples = _read_examples(loaded, args, input_path)
    if examples is None:
        return None
    records = loaded.predict(examples, args.batch_size, progress=not args.no_progress)
    if args.text is not None and loaded.task.type == "text2text":
        for record, text in zip(records, args.text, strict=True):
            record["input"] = text
    return records


def _read_examples(loaded, args, input_path: str | None, task: str | None = None) -> list | None:
    """The inputs the flags name, read as `task` (default: the model's) reads them."""
    from softprompt.data.records import TextExample
    from softprompt.inference.predict_io import image_inputs, read_inputs

    route = loaded.plan.route(task) if task else loaded.route
    kind = route.task.type
    if kind != "text2text":
        return image_inputs(args.image, args.image_dir, input_path, args.question, task_type=kind)
    if args.image or args.image_dir:
        what = "this prompt was trained for text" if args.prompt else f"{args.model} reads text"
        print(f"{what}; give --text or --input", file=sys.stderr)
        return None
    if args.text is not None:
        return [
            TextExample(id=str(i), input=route.apply_template(t)) for i, t in enumerate(args.text)
        ]
    if input_path is not None:
        field = args.input_field or route.record.get("input_field", "input")
        return read_inputs(input_path, field, route.record.get("template"))
    print("predict needs --text or --input", file=sys.stderr)
    return None


def _predict_per_record_task(loaded, args: argparse.Namespace) -> list | None:
    """A bank without --task: each --input record names its task (`task` field); all of
    them are answered together, rows of different tasks in mixed batches."""
    import tempfile

    from softprompt.inference.predict_io import relocate_errors, split_by_task

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
        read = {}
        for name, (path, lines) in files.items():
            examples = _read_examples(loaded, args, str(path), name)
            if examples is None:
                return None
            read[name] = iter(relocate_errors(examples, path, lines, args.input))
    # Records that name no task of the bank answer with their error, in their place.
    examples = [next(read[task]) if isinstance(task, str) else task for task in order]
    tasks = [task if isinstance(task, str) else None for task in order]
    return loaded.predict(examples, args.batch_size, progress=not args.no_progress, tasks=tasks)
