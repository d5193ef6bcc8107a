"""A pool of LLMs as one distilabel LLM, each prompt answered by the member it names.

GRA (``shared/seeds/001_*``) draws, for every sample, a Generator, Reviewers and an
Adjudicator from a pool of small models. distilabel gives a task one LLM, so the pool
is one :class:`PoolLLM`: a task hands it ``(member, prompt, max_new_tokens)``
requests (:meth:`PoolLLM.generate_routed`), and the pool gives every member all of its
prompts of the batch in one engine call.

Members are created from their spec strings when first asked for and loaded on first
use, so the pool serializes as plain specs (``pipeline.yaml`` reruns it) and a step
process loads only the members its rows need. Every member, whenever it is created,
gets the pool's decoding settings for it and, for ``openai:`` members, the pool's
``api_key`` (the recipe's; never serialized).
"""

from __future__ import annotations

import importlib
import logging
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from distilabel.models.llms.base import LLM
from pydantic import BaseModel, Field, PrivateAttr, SecretStr

from synthalign.llms import OpenAICompatLLM, SynthLLM, load_llm

if TYPE_CHECKING:
    from distilabel.typing import FormattedInput, GenerateOutput

__all__ = ["Generation", "PoolLLM", "PoolMember", "pool_members", "warm_engine_imports"]

logger = logging.getLogger(__name__)

_LOCAL_ENGINE_MODULES = (
    "torch",
    "transformers",
    "xgrammar",
    "synthalign.llms.transformers",
    "synthalign.llms.grammar",
    "transformers.models.llama.modeling_llama",
)


class PoolMember(BaseModel):
    """One model of the pool: a unique name (what rows record), its spec and decoding.

    The same spec may appear several times with different seeds or temperatures; the
    name tells the instances apart.
    """

    name: str
    spec: str
    generation_kwargs: dict[str, Any] = Field(default_factory=dict)
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)

    @property
    def remote(self) -> bool:
        return self.spec.startswith("openai:")


def pool_members(
    entries: Sequence[str | Mapping[str, Any]],
    *,
    seed: int = 0,
    temperature: float = 0.7,
    top_p: float = 0.95,
    engine_kwargs: Mapping[str, Any] | None = None,
) -> list[PoolMember]:
    """Pool entries (a spec, or a mapping with ``spec`` and optional ``name``, ``seed``,
    ``temperature``, ``top_p``, ``engine_kwargs``) as named members with their decoding.

    A spec listed more than once becomes ``SPEC#1``, ``SPEC#2``, ... and every entry
    without its own seed decodes with ``seed + position``, so repeated instances of one
    model behave as different models and rows can tell them apart.
    """
    options = [{"spec": e} if isinstance(e, str) else dict(e) for e in entries]
    totals = Counter(o["spec"] for o in options)
    seen: Counter[str] = Counter()
    members = []
    for index, entry in enumerate(options):
        spec = entry["spec"]
        seen[spec] += 1
        name = entry.get("name") or (spec if totals[spec] == 1 else f"{spec}#{seen[spec]}")
        decoding = {
            "temperature": temperature
            if entry.get("temperature") is None
            else entry["temperature"],
            "top_p": top_p if entry.get("top_p") is None else entry["top_p"],
            "seed": seed + index if entry.get("seed") is None else entry["seed"],
        }
        engine = {**(engine_kwargs or {}), **(entry.get("engine_kwargs") or {})}
        members.append(
            PoolMember(name=name, spec=spec, generation_kwargs=decoding, engine_kwargs=engine)
        )
    return members


@dataclass(frozen=True)
class Generation:
    """One routed generation: the text (None if the call failed) and why it failed."""

    text: str | None
    error: str | None
    output_tokens: int | None


def warm_engine_imports(specs: Sequence[str]) -> None:
    """Import the local engines' Python modules in this (parent) process.

    distilabel forks one worker per step, and every LLM step may load every local pool
    model. Workers forked from a parent that already imported torch, transformers and
    xgrammar skip seconds of imports each. Importing starts no thread pool and touches
    no GPU, so forking afterwards is safe. Remote (``openai:``) and vLLM members need
    nothing here.
    """
    if not any(spec.split(":", 1)[0] in ("builtin", "transformers") for spec in specs):
        return
    for name in _LOCAL_ENGINE_MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # a missing engine fails later, in its step, with its own message
            logger.debug("could not pre-import %s", name, exc_info=True)


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


class PoolLLM(LLM):
    """The model pool as one distilabel LLM; each request names the member that answers.

    Members served over HTTP (``openai:``) are called concurrently; local engines one
    after the other (they share the step's device).
    """

    members: list[PoolMember] = Field(min_length=1)
    api_key: SecretStr | None = Field(
        default=None,
        exclude=True,
        description="key of the openai: members (default: $OPENAI_API_KEY); never serialized",
    )

    _llms: dict[int, SynthLLM] = PrivateAttr(default_factory=dict)
    _loaded: set[int] = PrivateAttr(default_factory=set)

    def model_post_init(self, __context: Any) -> None:
        super().model_post_init(__context)
        # built in the parent, both by build_pipeline and when pipeline.yaml is loaded
        warm_engine_imports([m.spec for m in self.members])

    @property
    def model_name(self) -> str:
        return "pool:" + ",".join(m.name for m in self.members)

    def member_names(self) -> list[str]:
        return [m.name for m in self.members]

    def member(self, index: int) -> SynthLLM:
        """Member ``index`` as an LLM (created on first use, not loaded)."""
        if index not in self._llms:
            spec = self.members[index]
            llm = load_llm(
                spec.spec, **spec.generation_kwargs, engine_kwargs=dict(spec.engine_kwargs)
            )
            if isinstance(llm, OpenAICompatLLM) and llm.api_key is None:
                llm.api_key = self.api_key
            self._llms[index] = llm
        return self._llms[index]

    def openai_members(self) -> list[OpenAICompatLLM]:
        """The ``openai:`` members, for :func:`synthalign.llms.apply_api_key`."""
        return [
            llm
            for i, m in enumerate(self.members)
            if m.remote and isinstance(llm := self.member(i), OpenAICompatLLM)
        ]

    def member_llm(self, index: int) -> SynthLLM:
        """Member ``index``, loaded."""
        llm = self.member(index)
        if index not in self._loaded:
            llm.load()
            self._loaded.add(index)
        return llm

    def unload(self) -> None:
        for index in self._loaded:
            self._llms[index].unload()
        self._loaded.clear()  # created members stay, with the api key they were given

    def generate(  # type: ignore[override]
        self, inputs: list[FormattedInput], num_generations: int = 1
    ) -> list[GenerateOutput]:
        """distilabel's plain path: every input goes to the first member.

        synthalign's routed tasks never use it (:meth:`generate_routed`). No
        ``**kwargs`` here: distilabel would take them for a required runtime parameter.
        """
        return self.member_llm(0).generate_outputs(inputs, num_generations)

    def generate_routed(
        self, requests: Sequence[tuple[int, FormattedInput, int]]
    ) -> list[Generation]:
        """Answer ``(member, formatted input, max_new_tokens)`` requests, in order.

        Requests are grouped per member and token budget so each engine gets all of its
        prompts at once. A member whose call raises fails only its own requests.
        """
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, (member, _, max_new_tokens) in enumerate(requests):
            groups[(member, max_new_tokens)].append(i)
        results: list[Generation] = [Generation(None, "no output", None)] * len(requests)

        def run(key: tuple[int, int]) -> None:
            member, max_new_tokens = key
            idx = groups[key]
            try:
                outputs = self.member_llm(member).generate_outputs(
                    [requests[i][1] for i in idx], 1, max_new_tokens=max_new_tokens
                )
            except Exception as exc:  # one member failing must not sink the others
                logger.warning(
                    "pool member %s failed: %s", self.members[member].name, _first_line(exc)
                )
                failed = Generation(
                    None, f"generation failed: {type(exc).__name__}: {_first_line(exc)}", None
                )
                for i in idx:
                    results[i] = failed
                return
            for i, out in zip(idx, outputs, strict=True):
                text = (out.get("generations") or [None])[0]
                tokens = ((out.get("statistics") or {}).get("output_tokens") or [None])[0]
                results[i] = Generation(text, None if text is not None else "no output", tokens)

        remote = all(self.members[m].remote for m, _ in groups)
        if remote and len(groups) > 1:
            with ThreadPoolExecutor(max_workers=len(groups)) as executor:
                list(executor.map(run, list(groups)))
        else:
            for key in groups:
                run(key)
        return results
