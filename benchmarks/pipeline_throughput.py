"""Does a method pipeline keep the engine busy? Condor and GRA on builtin:tiny-random.

For each pipeline this script:

1. runs the method's distilabel pipeline (the quickstart recipe with every model
   swapped for ``builtin:tiny-random`` and the batch sizes left at the recipe
   defaults, so the defaults are what is measured), recording every engine call
   (``TransformersLLM._generate_batch``: the prompts, the decoding settings, the time);
2. replays exactly those prompts directly on the engine, every prompt a step sent to
   a pool member in one batch (one per decoding setting: a transformers ``generate``
   call takes one ``max_new_tokens`` / temperature);
3. prints ``engine ratio = direct time / pipeline engine time`` (target >= 0.9: the
   pipeline's batches cost no more engine time than one big batch) and, for the
   record, the whole pipeline's wall time and the share of it the engine was busy
   (process start-up, model loads and the queues between steps are the rest; on a
   random 1M-parameter model they dominate, on a real model the engine does).

For GRA it also prints the share of each reviewer / adjudicator prompt (chat template
applied, tokenized) that is a prefix shared by every prompt of that role -- what
vLLM's automatic prefix cache can reuse (target >= 60%), also rounded down to vLLM's
16-token KV blocks -- and the LLM calls per kept sample.

    OMP_NUM_THREADS=1 python benchmarks/pipeline_throughput.py            # a few minutes
    python benchmarks/pipeline_throughput.py --condor-samples 96 --gra-samples 96
    python benchmarks/pipeline_throughput.py --only gra
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one torch thread per step process (2-core machine)

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "pipelines" / "recipes"
TINY = "builtin:tiny-random"
VLLM_BLOCK = 16  # vLLM's default KV-cache block size: prefix-cache hits are whole blocks
REVIEW_RECORDS = {"InstructionReview": "instruction review", "ResponseReview": "response review",
                  "AdjudicationReview": "adjudication"}  # fmt: skip


# ---------------------------------------------------------------- recording

_RECORD_DIR = Path(".")


def install_recorder(folder: Path) -> None:
    """Wrap the transformers backend's one-engine-call method; step processes are forked
    from this one, so they inherit the wrapper and append to ``folder/<pid>.jsonl``."""
    from synthalign.llms.transformers import TransformersLLM

    global _RECORD_DIR
    _RECORD_DIR = folder  # read at call time: one wrapper, a folder per measured pipeline
    original = TransformersLLM._generate_batch
    if getattr(original, "_recorded", False):
        return

    @functools.wraps(original)
    def recorded(self, conversations, schemas, *, decoding):
        start = time.perf_counter()
        out = original(self, conversations, schemas, decoding=decoding)
        seconds = time.perf_counter() - start
        record = {
            "pid": os.getpid(),  # one step (replica) per process
            "model": self.model,
            "settings": dataclasses.asdict(decoding),
            "conversations": conversations,
            "schemas": schemas,
            "seconds": seconds,
            "output_tokens": sum(c.output_tokens or 0 for c in out),
        }
        with open(_RECORD_DIR / f"{os.getpid()}.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        return out

    recorded._recorded = True  # type: ignore[attr-defined]
    TransformersLLM._generate_batch = recorded  # type: ignore[method-assign]


def read_records(folder: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for f in sorted(folder.glob("*.jsonl"))
        for line in f.read_text().splitlines()
    ]


# ---------------------------------------------------------------- the pipelines


def condor_recipe(samples: int, cache: Path):
    import yaml

    from synthalign.pipelines.condor import CondorRecipe

    data = yaml.safe_load((RECIPES / "condor-quickstart.yaml").read_text())
    data.update(llm=TINY, num_samples=samples, cache_dir=str(cache))
    for role in ("question", "answer", "critique", "refine"):
        data[role].pop("batch_size", None)  # the recipe default (what a real run gets)
    # a random model needs bounded JSON strings to finish its questions and critiques
    data["question"]["max_question_chars"] = 60
    data["critique"]["max_field_chars"] = 40
    return CondorRecipe.model_validate(data)


def gra_recipe(samples: int, cache: Path):
    import yaml

    from synthalign.pipelines.gra import GRARecipe

    data = yaml.safe_load((RECIPES / "gra-quickstart.yaml").read_text())
    data.update(
        pool=[{"spec": TINY, "seed": s} for s in (1, 2, 3, 4)],
        samples_per_round=samples,
        cache_dir=str(cache),
    )
    data["seed_data"]["source"] = str(ROOT / data["seed_data"]["source"])  # repo-relative
    data["generation"].pop("batch_size", None)
    return GRARecipe.model_validate(data)


def run_method(name: str, recipe: Any, records: Path) -> tuple[float, Any]:
    """The method's first state (what ``synthalign generate`` runs), through the driver's
    :func:`~synthalign.execute.run_pipeline`; returns its wall time and published configs."""
    from synthalign.contract import get_method
    from synthalign.execute import leaf_datasets, run_pipeline

    method = get_method(name)
    state = method.first_state(recipe, False)
    pipeline = method.build_pipeline(recipe, state)
    install_recorder(records)
    start = time.perf_counter()
    ran = run_pipeline(pipeline, use_cache=False, sequential=method.sequential(recipe))
    wall = time.perf_counter() - start
    return wall, leaf_datasets(ran, method.configs(recipe, state))


# ---------------------------------------------------------------- direct replay


def replay(records: list[dict[str, Any]]) -> tuple[float, int, int]:
    """The recorded prompts again, one engine call per (step process, member, decoding
    setting): every prompt a step sent to a member, in one batch. Calls of different
    steps stay apart (a refinement needs its answer first). Each group gets a fresh,
    cold engine, as each step process of the pipeline starts with one.

    Returns (seconds, engine calls, output tokens)."""
    from synthalign.llms import Decoding, load_llm

    groups: dict[str, dict[str, Any]] = {}
    for r in records:
        key = json.dumps([r["pid"], r["model"], r["settings"]], sort_keys=True)
        group = groups.setdefault(
            key,
            {"model": r["model"], "settings": r["settings"], "conversations": [], "schemas": []},
        )
        group["conversations"].extend(r["conversations"])
        group["schemas"].extend(r["schemas"])
    seconds, tokens = 0.0, 0
    for group in groups.values():
        engine = load_llm(group["model"])
        engine.load()
        generate = type(engine)._generate_batch
        generate = getattr(generate, "__wrapped__", generate)  # not the recorder: it writes files
        start = time.perf_counter()
        decoding = Decoding(**group["settings"])
        out = generate(engine, group["conversations"], group["schemas"], decoding=decoding)
        seconds += time.perf_counter() - start
        tokens += sum(c.output_tokens or 0 for c in out)
        engine.unload()
    return seconds, len(groups), tokens


# ---------------------------------------------------------------- prefix share


def shared_prefix_share(
    records: list[dict[str, Any]],
) -> dict[str, tuple[int, float, float, int, float]]:
    """Per review role: (prompts, token share of the prefix every prompt of the role
    shares, the same rounded down to whole vLLM blocks, prefix tokens, mean prompt tokens)."""
    from synthalign.llms import load_llm

    llm = load_llm(TINY)
    llm.load()
    by_role: dict[str, list[list[int]]] = defaultdict(list)
    for r in records:
        for chat, schema in zip(r["conversations"], r["schemas"], strict=True):
            role = REVIEW_RECORDS.get((schema or {}).get("title", ""))
            if role:
                by_role[role].append(
                    llm._tokenizer(llm.prompt_text(chat), add_special_tokens=False)["input_ids"]
                )
    out = {}
    for role, prompts in by_role.items():
        common = min(len(p) for p in prompts)
        first = prompts[0]
        for p in prompts[1:]:
            n = 0
            while n < common and p[n] == first[n]:
                n += 1
            common = n
        total = sum(len(p) for p in prompts)
        blocks = (common // VLLM_BLOCK) * VLLM_BLOCK
        out[role] = (
            len(prompts),
            common * len(prompts) / total,
            blocks * len(prompts) / total,
            common,
            total / len(prompts),
        )
    return out


# ---------------------------------------------------------------- report


def measure(name: str, recipe: Any, work: Path) -> dict[str, Any]:
    records_dir = work / f"records-{name}"
    records_dir.mkdir()
    wall, datasets = run_method(name, recipe, records_dir)
    records = read_records(records_dir)
    engine = sum(r["seconds"] for r in records)
    prompts = sum(len(r["conversations"]) for r in records)
    direct, direct_calls, direct_tokens = replay(records)
    result = {
        "method": name,
        "wall_s": wall,
        "engine_s": engine,
        "engine_calls": len(records),
        "prompts": prompts,
        "output_tokens": sum(r["output_tokens"] for r in records),
        "mean_batch": prompts / max(len(records), 1),
        "direct_s": direct,
        "direct_calls": direct_calls,
        "direct_output_tokens": direct_tokens,
        "engine_ratio": direct / engine if engine else float("nan"),
        "wall_ratio": direct / wall if wall else float("nan"),
        "busy_share": engine / wall if wall else float("nan"),
    }
    if name == "gra":
        kept = len(datasets.get("all", ()))
        result["kept"] = kept
        result["calls_per_kept"] = prompts / kept if kept else float("inf")
        result["prefix"] = shared_prefix_share(records)
    return result


def report(results: list[dict[str, Any]]) -> None:
    cores = len(os.sched_getaffinity(0))
    print(f"\nmachine: {platform.processor() or platform.machine()}, {cores} cores; model {TINY}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")  # fmt: skip
    head = ("method", "prompts", "engine calls", "mean batch", "pipeline engine s", "direct s",
            "engine ratio", "pipeline wall s", "engine busy", "direct/wall")  # fmt: skip
    print(" | ".join(head))
    for r in results:
        calls = f"{r['engine_calls']} (direct {r['direct_calls']})"
        print(" | ".join([
            r["method"], str(r["prompts"]), calls, f"{r['mean_batch']:.1f}", f"{r['engine_s']:.2f}",
            f"{r['direct_s']:.2f}", f"{r['engine_ratio']:.2f}", f"{r['wall_s']:.1f}",
            f"{r['busy_share']:.0%}", f"{r['wall_ratio']:.2f}",
        ]))  # fmt: skip
    for r in results:
        if r["method"] != "gra":
            continue
        print(f"\nGRA: {r['kept']} kept of the round's candidates; {r['prompts']} LLM calls -> "
              f"{r['calls_per_kept']:.1f} LLM calls per kept sample")  # fmt: skip
        for role, (n, share, blocks, prefix, mean) in r["prefix"].items():
            print(f"GRA {role} prompts: {n}; shared prefix {prefix} tokens of {mean:.0f} on "
                  f"average: {share:.0%} of prompt tokens ({blocks:.0%} in whole "
                  f"{VLLM_BLOCK}-token vLLM blocks)")  # fmt: skip
    print("\nengine ratio = direct one-batch time / the pipeline's engine time (target >= 0.9)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--condor-samples", type=int, default=48, help="Condor question rows (quickstart: 12)"
    )
    parser.add_argument(
        "--gra-samples", type=int, default=48, help="GRA candidates in the round (quickstart: 24)"
    )
    parser.add_argument("--only", choices=["condor", "gra"], default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    results = []
    with tempfile.TemporaryDirectory(prefix="sa-bench-") as tmp:
        work = Path(tmp)
        if args.only in (None, "condor"):
            results.append(
                measure("condor", condor_recipe(args.condor_samples, work / "cache-condor"), work)
            )
        if args.only in (None, "gra"):
            results.append(measure("gra", gra_recipe(args.gra_samples, work / "cache-gra"), work))
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
