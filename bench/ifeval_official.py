"""sparring's IFEval checks against the official implementation, verdict by verdict.

Runs Google's `instruction_following_eval` (from a checkout you point at; nothing of it is in this
repository) and sparring's `follow_instructions` on the same prompts and responses, strict and loose,
and counts the instruction verdicts that differ. Optionally (`--tokenizers`) it also compares the
building blocks on every response and its eight loose variants: sentence counts
(`instructions_util.count_sentences` vs `count_sentences`), nltk.word_tokenize tokens vs
`word_tokens`, and langdetect's answer vs `detect_language`. `--derived` also compares response sets
made from each file (upper-cased, lower-cased, shifted to the next prompt, first line only, first 80
characters) to exercise the checks on texts no model wrote for those prompts.

    python bench/ifeval_official.py --official DIR --responses R1.jsonl [R2.jsonl ...] \
        [--input-data input_data.jsonl] [--nltk-data DIR] [--langdetect-seed 0|none] \
        [--repeats N] [--tokenizers] [--derived]

* `--official`: the folder that contains the `instruction_following_eval` package (a
  google-research checkout, or a copy of that one folder). Its dependencies (absl-py, immutabledict,
  langdetect, nltk) must be installed, and nltk must find the `punkt_tab` English model (give its
  nltk_data folder with `--nltk-data` or NLTK_DATA).
* `--input-data`: default `<official>/instruction_following_eval/data/input_data.jsonl`.
* `--responses`: IFEval response files (`{"prompt", "response"}` per line). Prompts of the input
  data without a response are skipped on both sides and counted.
* `--langdetect-seed`: `0` (default) sets `langdetect.DetectorFactory.seed = 0` before the official
  code runs, which makes it deterministic and equal to sparring's seeded detector; `none` leaves it
  unseeded as the official code runs by default, and then `--repeats` official runs show which
  verdicts change from run to run.
* Python's `random` is seeded (`--random-seed`, default 0, +1 per repeat) before each official run:
  the official code draws a random letter for keywords:letter_frequency when the letter is not an
  ASCII letter. Such verdicts are reported apart ("random_letter"); sparring counts the character.

Prints a report on stderr and one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import sys
import time
from pathlib import Path

from sparring.tasks.ifeval import evaluate, follow_instructions, loose_variants
from sparring.tasks.ifeval.checks import count_sentences, detect_language, word_tokens


def load_official(folder: Path, nltk_data: str | None):
    if not (folder / "instruction_following_eval" / "evaluation_lib.py").is_file():
        sys.exit(f"{folder}: no instruction_following_eval/evaluation_lib.py in this folder")
    if nltk_data:
        os.environ["NLTK_DATA"] = nltk_data
        import nltk

        nltk.data.path.insert(0, nltk_data)
    sys.path.insert(0, str(folder))
    lib = importlib.import_module("instruction_following_eval.evaluation_lib")
    util = importlib.import_module("instruction_following_eval.instructions_util")
    try:
        util.count_sentences("Probe. The tokenizer loads.")
    except LookupError as exc:
        sys.exit(f"the official code cannot load nltk's punkt model; give --nltk-data: {exc}")
    return lib, util


def official_verdicts(lib, inputs, prompt_to_response, seed: int) -> dict[str, list[list[bool]]]:
    """{"strict": [...], "loose": [...]}: one list of bools per input, from the official functions."""
    random.seed(seed)
    out = {}
    modes = (("strict", lib.test_instruction_following_strict), ("loose", lib.test_instruction_following_loose))
    for mode, fn in modes:
        out[mode] = [list(fn(inp, prompt_to_response).follow_instruction_list) for inp in inputs]
    return out


def sparring_verdicts(records, responses) -> dict[str, list[list[bool]]]:
    return {
        mode: [follow_instructions(rec, resp, loose=(mode == "loose")) for rec, resp in zip(records, responses)]
        for mode in ("strict", "loose")
    }


def metrics(verdicts: dict[str, list[list[bool]]]) -> dict[str, float]:
    out = {}
    for mode, rows in verdicts.items():
        out[f"prompt_{mode}"] = sum(all(r) for r in rows) / len(rows)
        out[f"instruction_{mode}"] = sum(sum(r) for r in rows) / sum(len(r) for r in rows)
    return out


def is_random_letter(instruction_id: str, kwargs: dict) -> bool:
    # The official LetterFrequencyChecker replaces a letter outside a-z/A-Z by a random one.
    letter = kwargs.get("letter") or ""
    return instruction_id == "keywords:letter_frequency" and not (len(letter) == 1 and "a" <= letter.lower() <= "z")


def derived_sets(prompt_to_response: dict[str, str], prompts: list[str]) -> dict[str, dict[str, str]]:
    """Response sets made from one file's responses, to exercise the checks on other texts: all upper
    case, all lower case, the next prompt's response (so each instruction meets unrelated text,
    other languages included), only the first line, and only the first 80 characters."""
    have = [p for p in prompts if p in prompt_to_response]
    nxt = {p: prompt_to_response[have[(i + 1) % len(have)]] for i, p in enumerate(have)}
    return {
        "upper": {p: prompt_to_response[p].upper() for p in have},
        "lower": {p: prompt_to_response[p].lower() for p in have},
        "next_prompt": nxt,
        "first_line": {p: prompt_to_response[p].strip().split("\n")[0] for p in have},
        "first_80_chars": {p: prompt_to_response[p][:80] for p in have},
    }


def compare_file(path: Path, prompt_to_response: dict[str, str], lib, inputs, records, args) -> dict:
    keep = [i for i, inp in enumerate(inputs) if inp.prompt in prompt_to_response]
    missing = len(inputs) - len(keep)
    inps = [inputs[i] for i in keep]
    recs = [records[i] for i in keep]
    responses = [prompt_to_response[inp.prompt] for inp in inps]

    t0 = time.perf_counter()
    ours = sparring_verdicts(recs, responses)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    runs = [official_verdicts(lib, inps, prompt_to_response, args.random_seed + r) for r in range(args.repeats)]
    t_official = (time.perf_counter() - t0) / args.repeats
    official = runs[0]

    report: dict = {
        "file": str(path),
        "prompts": len(inps),
        "prompts_without_response": missing,
        "seconds_sparring": round(t_ours, 2),
        "seconds_official": round(t_official, 2),
    }
    for mode in ("strict", "loose"):
        n = same = unstable = 0
        differ: dict[str, list] = {"random_letter": [], "unstable": [], "other": []}
        for j, (inp, rec) in enumerate(zip(inps, recs)):
            for k, instruction_id in enumerate(inp.instruction_id_list):
                n += 1
                votes = {run[mode][j][k] for run in runs}
                if len(votes) > 1:
                    unstable += 1
                mine, theirs = ours[mode][j][k], official[mode][j][k]
                if mine == theirs and len(votes) == 1:
                    same += 1
                    continue
                if mine == theirs:
                    continue  # agrees with the first official run; counted as unstable above
                entry = {"key": inp.key, "instruction": instruction_id, "sparring": mine, "official": theirs}
                if is_random_letter(instruction_id, rec["kwargs"][k]):
                    differ["random_letter"].append(entry)
                elif len(votes) > 1:
                    differ["unstable"].append(entry)
                else:
                    differ["other"].append(entry)
        report[mode] = {
            "instructions": n,
            "same_in_every_official_run": same,
            "official_unstable": unstable,
            "differ": {kind: len(v) for kind, v in differ.items()},
        }
        for kind, entries in differ.items():
            for e in entries:
                print(f"  {path.name} {mode} {kind}: {e}", file=sys.stderr)
    report["metrics_sparring"] = metrics(ours)
    report["metrics_official"] = metrics(official)
    # The same four metrics without the letter_frequency instructions where the official code counts
    # a random letter (prompts left with no instruction drop out).
    kept = [
        [k for k, i in enumerate(inp.instruction_id_list) if not is_random_letter(i, rec["kwargs"][k])]
        for inp, rec in zip(inps, recs)
    ]

    def without_random_letter(verdicts):
        return {mode: [[rows[j][k] for k in ks] for j, ks in enumerate(kept) if ks] for mode, rows in verdicts.items()}

    report["metrics_without_random_letter_sparring"] = metrics(without_random_letter(ours))
    report["metrics_without_random_letter_official"] = metrics(without_random_letter(official))
    # sparring's own evaluate() must give the metrics computed from its verdicts.
    ev = evaluate(recs, responses)
    report["evaluate_matches_verdicts"] = all(abs(ev[k] - v) < 1e-12 for k, v in report["metrics_sparring"].items())
    if args.tokenizers:
        report["tokenizers"] = compare_tokenizers(lib, responses)
    return report


def compare_tokenizers(lib, responses) -> dict:
    import langdetect
    import nltk

    util = sys.modules["instruction_following_eval.instructions_util"]
    texts = [v for r in responses for v in dict.fromkeys(loose_variants(r)) if v.strip()]
    sent = sum(util.count_sentences(t) != count_sentences(t) for t in texts)
    words = sum(nltk.word_tokenize(t) != word_tokens(t) for t in texts)

    def official_detect(text):
        try:
            return langdetect.detect(text)
        except langdetect.LangDetectException:
            return None

    # On the responses only (langdetect is the slow part); the official detect uses the global
    # factory, seeded by --langdetect-seed 0.
    lang = sum(official_detect(r) != detect_language(r) for r in responses if r.strip())
    return {
        "texts": len(texts),
        "sentence_count_differs": sent,
        "word_tokens_differ": words,
        "responses": sum(1 for r in responses if r.strip()),
        "language_differs": lang,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", type=Path, required=True)
    ap.add_argument("--input-data", type=Path)
    ap.add_argument("--responses", type=Path, nargs="+", required=True)
    ap.add_argument("--nltk-data")
    ap.add_argument("--langdetect-seed", choices=("0", "none"), default="0")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--random-seed", type=int, default=0)
    ap.add_argument("--tokenizers", action="store_true")
    ap.add_argument("--derived", action="store_true", help="also compare response sets derived from each file")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")

    lib, _ = load_official(args.official, args.nltk_data)
    import langdetect

    langdetect.DetectorFactory.seed = 0 if args.langdetect_seed == "0" else None
    input_path = args.input_data or args.official / "instruction_following_eval" / "data" / "input_data.jsonl"
    inputs = lib.read_prompt_list(str(input_path))
    records = [{"prompt": i.prompt, "instruction_id_list": i.instruction_id_list, "kwargs": i.kwargs} for i in inputs]

    reports = []
    for path in args.responses:
        sets = {path: lib.read_prompt_to_response_dict(str(path))}
        if args.derived:
            for name, p2r in derived_sets(sets[path], [i.prompt for i in inputs]).items():
                sets[path.with_name(f"{path.stem}+{name}")] = p2r
        for name, prompt_to_response in sets.items():
            reports.append(compare_file(name, prompt_to_response, lib, inputs, records, args))
    for rep in reports:
        path = Path(rep["file"])
        print(
            f"{path.name}: {rep['prompts']} prompts ({rep['prompts_without_response']} without response)",
            file=sys.stderr,
        )
        for mode in ("strict", "loose"):
            r = rep[mode]
            print(
                f"  {mode}: {r['same_in_every_official_run']}/{r['instructions']} verdicts equal, "
                f"official unstable {r['official_unstable']}, differ {r['differ']}",
                file=sys.stderr,
            )
        print(f"  sparring {rep['metrics_sparring']}\n  official {rep['metrics_official']}", file=sys.stderr)
        if "tokenizers" in rep:
            print(f"  tokenizers {rep['tokenizers']}", file=sys.stderr)
    totals = {
        mode: {
            "instructions": sum(r[mode]["instructions"] for r in reports),
            "same_in_every_official_run": sum(r[mode]["same_in_every_official_run"] for r in reports),
            "official_unstable": sum(r[mode]["official_unstable"] for r in reports),
            **{
                f"differ_{kind}": sum(r[mode]["differ"][kind] for r in reports)
                for kind in ("random_letter", "unstable", "other")
            },
        }
        for mode in ("strict", "loose")
    }
    totals["metrics_equal_files"] = sum(r["metrics_sparring"] == r["metrics_official"] for r in reports)
    totals["metrics_without_random_letter_equal_files"] = sum(
        r["metrics_without_random_letter_sparring"] == r["metrics_without_random_letter_official"] for r in reports
    )
    print(f"total over {len(reports)} response sets: {totals}", file=sys.stderr)
    print(
        json.dumps(
            {
                "input_data": str(input_path),
                "prompts": len(inputs),
                "langdetect_seed": args.langdetect_seed,
                "repeats": args.repeats,
                "totals": totals,
                "files": reports,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
