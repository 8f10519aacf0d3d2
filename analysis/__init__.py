"""Layer-utilization analysis: how much of the space available to its weights each layer of a trained
network uses on a given dataset (after Garg et al., 2024, arXiv 2407.04797; definitions in the README, section Method).

Public API::

    from analysis import AnalysisSettings, analyze, load_model, plots
    result = analyze(my_module, my_dataloader, AnalysisSettings(samples=2000))   # objects: any nn.Module, any
    result = analyze("zoo:vit-fmnist-supervised", "fashion-mnist:test", samples=2000)  # DataLoader; or ids
    result.layers, result.mlu, result.mlu_err, result.at_energy(0.95, 0.999)
    plots.utilization(result), plots.spectra(result, "blocks.3.mlp.fc1"), plots.compare([a, b])
    model, data_config = load_model("zoo:vit-fmnist-supervised")
    from analysis import timeline
    timeline("zoo:vit-fmnist-dino", "fashion-mnist:test", samples=2000).table   # one row per checkpoint

``analysis.timeline`` is the function; its module's other names import as ``from analysis.timeline import
Timeline, series_checkpoints``.
"""

__version__ = "0.1.0"

from .engine import analyze  # noqa: E402
from .errors import AnalysisError  # noqa: E402
from .models import load_model  # noqa: E402
from .result import Result  # noqa: E402
from .settings import AnalysisSettings  # noqa: E402
from . import compression as _compression  # noqa: E402,F401  registers the file: loader of compressed exports
from .timeline import timeline  # noqa: E402  (rebinds the package attribute from the module to the function)


__all__ = ["AnalysisError", "AnalysisSettings", "Result", "analyze", "load_model", "timeline", "__version__"]
