"""Backend overhead: a distilabel TextGeneration step on our transformers backend vs a
raw batched ``model.generate`` on the same model, prompts and settings.

Both sides generate greedily for the same 64 prompts in one batch; the ratio of their
tokens/s is the cost of going through distilabel and synthalign (target >= 0.95).
Run: ``python benchmarks/backend_throughput.py [--model builtin:smollm2-135m] [--tokens 32]``.
The vLLM half lives in ``benchmarks/backend_throughput_vllm.py`` (needs .venv-vllm).
"""

from __future__ import annotations

import argparse
import time

import torch
from distilabel.steps.tasks import TextGeneration
from transformers import AutoModelForCausalLM, AutoTokenizer

from synthalign.llms import load_llm
from synthalign.models import resolve_model

TOPICS = [
    "tides", "volcanoes", "bread", "chess", "rainbows", "bees", "glaciers", "jazz",
    "compilers", "ferns", "comets", "tea", "bridges", "owls", "deserts", "violins",
]  # fmt: skip


def prompts(n: int) -> list[str]:
    return [
        f"In two sentences, explain one surprising fact about {TOPICS[i % len(TOPICS)]} (#{i})."
        for i in range(n)
    ]


def raw_generate(path: str, texts: list[str], max_new_tokens: int) -> tuple[int, float]:
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    chats = [
        tok.apply_chat_template(
            [{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True
        )
        for t in texts
    ]
    batch = tok(chats, return_tensors="pt", padding=True, add_special_tokens=False)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
        )
    elapsed = time.perf_counter() - start
    new = out[:, batch["input_ids"].shape[1] :]
    tokens = 0
    for row in new.tolist():
        n = len(row)
        for j, t in enumerate(row):
            if t == tok.eos_token_id:
                n = j + 1
                break
        tokens += n
    return tokens, elapsed


def step_generate(spec: str, texts: list[str], max_new_tokens: int) -> tuple[int, float]:
    step = TextGeneration(
        llm=load_llm(spec, max_new_tokens=max_new_tokens, temperature=0),
        input_batch_size=len(texts),
    )
    step.load()
    rows = [{"instruction": t} for t in texts]
    start = time.perf_counter()
    outputs = next(step.process(rows))
    elapsed = time.perf_counter() - start
    tokens = sum(
        r["distilabel_metadata"]["statistics_text_generation_0"]["output_tokens"] for r in outputs
    )
    return tokens, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:smollm2-135m")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved runs per side; medians are reported"
    )
    args = parser.parse_args()
    texts = prompts(args.prompts)
    path = resolve_model(args.model)
    raw_generate(path, texts[:4], 4)  # warm-up: first-call kernel and allocator costs
    raw_runs, our_runs = [], []
    for _ in range(args.repeats):  # interleaved, so a burst of load hits both sides alike
        raw_runs.append(raw_generate(path, texts, args.tokens))
        our_runs.append(step_generate(args.model, texts, args.tokens))
    (raw_tokens, raw_s), (ours_tokens, ours_s) = (
        sorted(r, key=lambda x: x[0] / x[1])[len(r) // 2] for r in (raw_runs, our_runs)
    )
    raw_tps, ours_tps = raw_tokens / raw_s, ours_tokens / ours_s
    print(
        f"model {args.model}, {args.prompts} prompts, {args.tokens} new tokens, greedy, {torch.get_num_threads()} threads, median of {args.repeats}"
    )
    print(
        f"raw model.generate (one batch):        {raw_tokens:6d} tokens in {raw_s:7.2f} s = {raw_tps:8.1f} tok/s"
    )
    print(
        f"distilabel TextGeneration + synthalign: {ours_tokens:6d} tokens in {ours_s:7.2f} s = {ours_tps:8.1f} tok/s"
    )
    print(f"ratio (ours / raw): {ours_tps / raw_tps:.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
