"""RDPOTrainer vs TRL's DPOTrainer: time per optimizer step and peak memory.

Same model, data, settings and seed for both; the only difference is the trainer
class (and the ``tau`` column it reads). rDPO adds a per-row linear term to TRL's own
sigmoid loss and reuses TRL's forward pass, so the target is a time ratio <= 1.03.

Each run happens in its own subprocess (peak memory is then per run: CUDA's
``max_memory_allocated``, or the process's max RSS on CPU), runs alternate
rdpo/dpo/dpo/rdpo/... (ABBA) to spread machine noise evenly, and per-step times after the
warm-up steps are pooled and summarized by their median.

    python benchmarks/rdpo_step.py                      # tiny model, CPU-friendly
    python benchmarks/rdpo_step.py --size small --steps 30 --repeats 3   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SIZES = {
    # hidden, layers, heads, intermediate
    "tiny": None,  # builtin:tiny-random as is
    "small": (512, 8, 8, 1408),
    "medium": (1024, 16, 16, 2816),
}


def _model(size: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from synthalign.models import tiny_random_path

    path = tiny_random_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if SIZES[size] is None:
        return AutoModelForCausalLM.from_pretrained(path), tokenizer
    hidden, layers, heads, inter = SIZES[size]
    config = AutoModelForCausalLM.from_pretrained(path).config
    config.update({"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
                   "num_key_value_heads": heads, "head_dim": hidden // heads, "intermediate_size": inter})  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(config), tokenizer


def _data(n: int, length: int) -> Any:
    import random

    from datasets import Dataset

    rng = random.Random(0)
    words = [
        "the",
        "of",
        "and",
        "science",
        "history",
        "answer",
        "response",
        "critique",
        "strength",
        "weakness",
        "music",
        "code",
        "math",
    ]

    def text(k: int) -> str:
        return " ".join(rng.choice(words) for _ in range(k))

    rows = []
    for _ in range(n):
        rows.append(
            {
                "prompt": [
                    {"role": "user", "content": text(rng.randint(length // 4, length // 2))}
                ],
                "chosen": [
                    {"role": "assistant", "content": text(rng.randint(length // 2, length))}
                ],
                "rejected": [
                    {"role": "assistant", "content": text(rng.randint(length // 2, length))}
                ],
                "tau": rng.random(),
            }
        )
    return Dataset.from_list(rows)


def worker(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    import datasets
    import torch
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from synthalign.trainers.rdpo import RDPOConfig, RDPOTrainer

    datasets.disable_progress_bars()
    cuda = torch.cuda.is_available()
    model, tokenizer = _model(args.size)
    data = _data(args.batch_size * (args.steps + 2), args.length)
    if kind == "dpo":
        data = data.remove_columns("tau")
    times: list[float] = []
    cpu_times: list[float] = []  # CPU seconds: steadier than wall time on a shared machine
    if not cuda:
        torch.set_num_threads(args.threads)

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            self.start, self.cpu = time.perf_counter(), time.process_time()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.start)
            cpu_times.append(time.process_time() - self.cpu)

    config_cls, trainer_cls = (
        (RDPOConfig, RDPOTrainer) if kind == "rdpo" else (DPOConfig, DPOTrainer)
    )
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")
    with tempfile.TemporaryDirectory() as out:
        trainer_args = config_cls(
            output_dir=out,
            max_steps=args.steps,
            per_device_train_batch_size=args.batch_size,
            learning_rate=1e-5,
            bf16=cuda,
            gradient_checkpointing=False,
            precompute_ref_log_probs=args.precompute,
            max_length=2 * args.length + 64,
            logging_steps=10_000,
            save_strategy="no",
            report_to="none",
            seed=0,
            dataloader_pin_memory=False,
        )
        trainer = trainer_cls(
            model=model, args=trainer_args, train_dataset=data, processing_class=tokenizer,
            peft_config=peft_config, callbacks=[StepTimer()],
        )  # fmt: skip
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    return {
        "kind": kind,
        "step_s": times[args.warmup :],
        "cpu_s": cpu_times[args.warmup :],
        "peak_mib": peak,
        "device": "cuda" if cuda else "cpu",
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--length", type=int, default=96, help="about how many words per response")
    parser.add_argument(
        "--repeats", type=int, default=2, help="subprocess runs per trainer (alternating)"
    )
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--precompute", action="store_true", help="precompute_ref_log_probs=True")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (CPU runs only)")
    parser.add_argument("--worker", choices=["rdpo", "dpo"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args)))
        return

    forwarded = [a for a in sys.argv[1:]]
    results: dict[str, list[dict[str, Any]]] = {"rdpo": [], "dpo": []}
    env = dict(os.environ, TQDM_DISABLE="1", TRANSFORMERS_VERBOSITY="error")
    for repeat in range(args.repeats):
        # ABBA order: whichever trainer runs first in a pair gets no systematic edge
        for kind in ("rdpo", "dpo") if repeat % 2 == 0 else ("dpo", "rdpo"):
            proc = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), *forwarded, "--worker", kind],
                capture_output=True, text=True, env=env, check=False,
            )  # fmt: skip
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                sys.exit(f"{kind} run failed:\n{proc.stderr[-3000:]}")
            results[kind].append(json.loads(line[len("RESULT ") :]))

    summary = {}
    for kind, runs in results.items():
        steps = [s for run in runs for s in run["step_s"]]
        cpu = [s for run in runs for s in run["cpu_s"]]
        summary[kind] = {
            "median_step_s": statistics.median(steps),
            "median_cpu_s": statistics.median(cpu),
            "mean_step_s": statistics.fmean(steps),
            "peak_mib": max(run["peak_mib"] for run in runs),
            "steps_timed": len(steps),
        }
    device = results["rdpo"][0]["device"]
    setting = f"size={args.size} batch={args.batch_size} length~{args.length} lora={args.lora} precompute={args.precompute}"
    print(
        f"device: {device}; {setting}; {args.repeats} runs x {args.steps - args.warmup} timed steps per trainer"
    )
    for kind in ("dpo", "rdpo"):
        s = summary[kind]
        print(
            f"{kind:>5}: {1000 * s['median_step_s']:8.1f} ms/step wall (median; mean {1000 * s['mean_step_s']:.1f}), "
            f"{1000 * s['median_cpu_s']:8.1f} ms/step CPU, peak {s['peak_mib']:8.1f} MiB"
        )
    ratio = summary["rdpo"]["median_step_s"] / summary["dpo"]["median_step_s"]
    cpu_ratio = summary["rdpo"]["median_cpu_s"] / summary["dpo"]["median_cpu_s"]
    mem_ratio = summary["rdpo"]["peak_mib"] / summary["dpo"]["peak_mib"]
    print(
        f"ratio rdpo/dpo: time {ratio:.3f} wall, {cpu_ratio:.3f} CPU (target <= 1.03); peak memory {mem_ratio:.3f}"
    )


if __name__ == "__main__":
    main()
