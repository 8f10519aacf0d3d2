"""Compression at the utilized rank: subspaces -> ranks -> factorized model -> evaluation -> fine-tuning -> export.

Module flow: :mod:`.subspaces` (eigenvectors from the analysis' raw moments), :mod:`.factorize` (ranks at
energies or for a budget, the factorized copy), :mod:`.thin_layers` (the thin layers), :mod:`.accuracy` (top-1 by
the classifier or a linear probe), :mod:`.finetune` (short recovery), :mod:`.checkpoint` (safetensors + rank map,
loadable as ``file:``), :mod:`.pipeline` (all of it, plus the sweep).
"""

from .factorize import LayerRank, choose_ranks, energy_for_budget, factorize_model, kept_fraction, rank_map
from .finetune import FinetuneSettings
from .thin_layers import FactorizedConv2d, FactorizedLinear
from .pipeline import CompressionReport, CompressionRequest, compress, store_summary, stored_summaries, sweep

__all__ = [
    "CompressionReport", "CompressionRequest", "FactorizedConv2d", "FactorizedLinear", "FinetuneSettings", "LayerRank",
    "choose_ranks", "compress", "energy_for_budget", "factorize_model", "kept_fraction", "rank_map", "store_summary",
    "stored_summaries", "sweep",
]
