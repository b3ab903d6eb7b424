"""The commands that share a run and find one's way around sparring: export, push, card, recipes and
config-reference (`add_parser`, for sparring.cli's COMMAND_MODULES). The work is in

- sparring.report.cards: the model card of each saved policy (`write_model_card`, `refresh_model_cards`);
- sparring.report.hub: `push` to the Hugging Face Hub;
- sparring.report.export: `export_trl`, the preference pairs in TRL's format;
- sparring.report.configdoc: `config_reference`, docs/config.md;
- sparring.recipebook: `find_recipe`, the shipped recipes by name;
- sparring.keyhints: the nearest valid key for an unknown one, and TRL's names.

Heavy imports stay inside the functions.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sparring.errors import UserError
from sparring.recipebook import judge_recipes, recipe_summary, shipped_recipes
from sparring.report.cards import refresh_model_cards
from sparring.report.configdoc import config_reference
from sparring.report.export import export_trl
from sparring.report.hub import push
from sparring.report.runconfig import iterations_on_disk


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="a run's preference pairs as a datasets/JSONL dataset in TRL's format",
        description="Writes OUT as a datasets.DatasetDict (load_from_disk(OUT), one split iter_<t> per "
        "iteration), OUT/iter_<t>.jsonl and OUT/export.json (docs/share.md).",
    )
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--format", default="trl", choices=["trl"])
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "push",
        help="upload a trained policy (with its model card) to the Hugging Face Hub",
        description="Uploads RUN_DIR/iter_T/policy (or any saved model directory) to REPO_ID, creating "
        "the repo if needed. The token is the logged-in one (`hf auth login`) or HF_TOKEN.",
    )
    p.add_argument("source", metavar="RUN_DIR|POLICY_DIR")
    p.add_argument("repo_id", metavar="ORG/NAME")
    p.add_argument(
        "--iter", type=int, metavar="T", help="with a run directory: iteration T's policy (default: the last trained)"
    )
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("card", help="write or refresh the model card (README.md) of every policy of a run")
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.set_defaults(func=cmd_card)

    p = sub.add_parser("recipes", help="list the shipped recipes (`sparring run NAME` runs one)")
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser("config-reference", help="print the reference of every config key (docs/config.md)")
    p.add_argument("--out", metavar="FILE", help="write it to FILE instead of printing it")
    p.set_defaults(func=cmd_config_reference)


def cmd_export(args) -> int:
    report = export_trl(args.run, args.out, format=args.format)
    for name, s in report["splits"].items():
        print(
            f"{name}: {s['pairs']} pairs from {s['prompts']} prompts ({s['skipped_tied']} tied, "
            f"{s['skipped_incomplete'] + s['skipped_other']} other left out)"
        )
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"written: {args.out} (datasets.load_from_disk), {args.out}/iter_<t>.jsonl, {args.out}/export.json")
    return 0


def cmd_push(args) -> int:
    source = Path(args.source)
    if (source / "config.yaml").is_file():
        trained = [t for t in iterations_on_disk(source) if (source / f"iter_{t}" / "policy" / "config.json").is_file()]
        if args.iter is None:
            if not trained:
                raise UserError(f"{source}: no iteration has a trained policy yet")
            t = trained[-1]
        elif args.iter in trained:
            t = args.iter
        else:
            raise UserError(
                f"{source}: iteration {args.iter} has no trained policy"
                + (f" (trained: {', '.join(map(str, trained))})" if trained else "")
            )
        source = source / f"iter_{t}" / "policy"
    elif args.iter is not None:
        raise UserError(f"--iter goes with a run directory; {source} is not one (no config.yaml)")
    print(f"uploaded {source}: {push(source, args.repo_id, private=args.private)}")
    return 0


def cmd_card(args) -> int:
    written = refresh_model_cards(args.run)
    if not written:
        print(f"{args.run}: no saved policy with a sparring card to write")
    for path in written:
        print(f"written: {path}")
    return 0


def cmd_recipes(args) -> int:
    recipes = shipped_recipes()
    judges = judge_recipes()
    width = max(map(len, [*recipes, *judges]))
    for name, path in recipes.items():
        print(f"{name:<{width}}  {recipe_summary(path)}")
    if judges:  # recipes of `sparring train-judge`, not of `sparring run`
        print("\nsparring train-judge NAME:")
        for name, path in judges.items():
            print(f"{name:<{width}}  {recipe_summary(path)}")
    return 0


def cmd_config_reference(args) -> int:
    text = config_reference()
    if args.out:
        from sparring.rundir import write_text

        write_text(args.out, text)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    import sys

    parser = argparse.ArgumentParser(prog="python -m sparring.share")
    add_parser(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args()
    try:
        sys.exit(ns.func(ns))
    except UserError as exc:
        print(f"sparring: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
