"""Overhead of our vLLM backend: distilabel TextGeneration step vs. a raw ``vllm.LLM.generate``.

Both paths share one engine (same model, same settings, same per-prompt seeds, so the
same tokens are generated); what differs is everything around the engine call:
distilabel's task formatting, our ``SynthLLM.generate`` (chat templating, one
``SamplingParams`` per prompt) vs. a pre-templated ``LLM.generate``. The prefix cache is reset before every timed run, and
the two paths alternate over several rounds; the best round of each is reported
(the machine is shared, so the best round is the least disturbed one).

Run in the vllm venv (CPU: ``bash scripts/setup-vllm.sh`` first):

    .venv-vllm/bin/python benchmarks/backend_throughput_vllm.py [--model builtin:tiny-random]
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

TOPICS = [
    "tide pools",
    "sourdough starters",
    "bridge cables",
    "migrating geese",
    "solar flares",
    "library catalogues",
    "glacier lakes",
    "chess openings",
]
TASKS = [
    "Explain to a curious twelve-year-old how {t} work.",
    "List three common misconceptions about {t}.",
    "Write a short haiku about {t}.",
    "Give a two-sentence history of {t}.",
    "Describe one experiment a student could run on {t}.",
    "Compare {t} with something found in a kitchen.",
    "Draft a quiz question about {t} with its answer.",
    "Summarize why engineers or scientists care about {t}.",
]


def build_prompts(n: int = 64) -> list[str]:
    """64 distinct instructions: every task applied to every topic."""
    prompts = [task.format(t=topic) for topic in TOPICS for task in TASKS]
    return prompts[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny-random")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--engine-subprocess",
        action="store_true",
        help="run vLLM's engine core in its own process (the GPU default) instead of in-process",
    )
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    args = parser.parse_args()

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")

    from distilabel.steps.tasks import TextGeneration
    from vllm import SamplingParams

    from synthalign.llms.vllm import VLLM

    settings: dict[str, Any] = {
        "max_new_tokens": args.max_new_tokens,
        "temperature": 0.7,
        "top_p": 0.95,
        "seed": 0,
    }
    llm = VLLM(
        model=args.model,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=1024,
        generation_kwargs=settings,
        engine_in_process=False if args.engine_subprocess else None,
    )
    task = TextGeneration(
        name="generate", llm=llm, input_batch_size=64, add_raw_output=False, add_raw_input=False
    )
    started = time.monotonic()
    task.load()
    load_s = time.monotonic() - started
    engine = llm._llm
    assert engine is not None
    tokenizer = engine.get_tokenizer()

    prompts = build_prompts()
    rows = [{"instruction": p} for p in prompts]
    templated = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]
    raw_params = [
        SamplingParams(max_tokens=args.max_new_tokens, temperature=0.7, top_p=0.95, seed=i)
        for i in range(len(prompts))
    ]

    def run_step() -> int:
        out = next(task.process(rows))
        return sum(r["distilabel_metadata"]["statistics_generate"]["output_tokens"] for r in out)

    def run_raw() -> int:
        outs = engine.generate(templated, sampling_params=raw_params, use_tqdm=False)
        return sum(len(o.outputs[0].token_ids) for o in outs)

    run_raw()  # warm-up: first-batch allocations and kernel choices
    run_step()
    best: dict[str, tuple[float, int]] = {}
    for _ in range(args.rounds):
        for name, fn in (("step", run_step), ("raw", run_raw)):
            engine.reset_prefix_cache()
            t0 = time.monotonic()
            tokens = fn()
            seconds = time.monotonic() - t0
            if name not in best or tokens / seconds > best[name][1] / best[name][0]:
                best[name] = (seconds, tokens)
    task.unload()

    step_tps = best["step"][1] / best["step"][0]
    raw_tps = best["raw"][1] / best["raw"][0]
    mode = "engine subprocess" if args.engine_subprocess else "engine default for platform"
    print(
        f"{mode}; model {args.model}  prompts {len(prompts)}  max_new_tokens {args.max_new_tokens}  engine load {load_s:.1f}s"
    )
    print(
        f"distilabel TextGeneration + synthalign VLLM: {best['step'][1]} tokens in {best['step'][0]:.2f}s = {step_tps:.1f} tokens/s"
    )
    print(
        f"raw vllm.LLM.generate batch:                {best['raw'][1]} tokens in {best['raw'][0]:.2f}s = {raw_tps:.1f} tokens/s"
    )
    print(f"ratio (ours / raw): {step_tps / raw_tps:.3f}")


if __name__ == "__main__":
    main()
