"""Keep distilabel off the network at run time.

When a pipeline finishes, distilabel builds citations for each step by fetching
BibTeX from arXiv for every reference URL in the step's docstring (whenever ``bs4``
is importable). A data job must not depend on, or leak to, the network, so that
lookup is replaced by one that declines. Imported by every module that builds
pipelines, so it is in force in the distilabel CLI too.
"""

from __future__ import annotations


def _no_bibtex(ref: str) -> str:
    raise ValueError(f"synthalign runs offline: not fetching a citation for {ref}")


def disable_network_citations() -> None:
    import distilabel.distiset
    import distilabel.utils.docstring

    distilabel.distiset.get_bibtex = _no_bibtex
    distilabel.utils.docstring.get_bibtex = _no_bibtex


disable_network_citations()
