"""Progress bars: tqdm's widget in Jupyter where it can be drawn, its text bar everywhere else."""

from __future__ import annotations

import warnings

__all__ = ["progress_bar"]


def progress_bar(iterable=None, **kwargs):
    """``tqdm.auto.tqdm(iterable, **kwargs)``, minus its ``TqdmWarning: IProgress not found``: in a
    Jupyter kernel without ipywidgets, tqdm falls back to the text bar, which is what we want, so
    the warning about it is only noise in every notebook that trains."""
    from tqdm import TqdmWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TqdmWarning)
        from tqdm.auto import tqdm
    return tqdm(iterable, **kwargs)
