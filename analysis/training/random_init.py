"""Random-init "recipe": the zoo ViT at its seeded initialisation (timm's ViT init), no training.

Only the ``head`` is fitted: a linear probe (logistic regression on the frozen CLS features of the 60k training
images, :func:`analysis.training.evaluate.fit_linear_probe`), so that the manifest's accuracies say what random
features support. Every other weight is exactly ``build_vit(seed)``.

    python -m analysis.training.random_init --out zoo_logs/random --seed 0
"""

from __future__ import annotations

import sys

from . import common
from .evaluate import install_head, probe_head


def main(argv: list[str] | None = None) -> int:
    p = common.base_parser("random_init", __doc__.splitlines()[0], epochs=0, batch_size=256, lr=0.0,
                           weight_decay=0.0, warmup_epochs=0.0)
    args = common.parse(p, argv)
    common.setup(args)
    train = common.load_split("train", args.train_limit)
    model = common.build_model(args.seed, args.device)
    model.eval()
    common.log("fitting the linear-probe head on frozen CLS features of the random network")
    install_head(model, *probe_head(model, train.subset(args.probe_limit)))
    common.write_outputs(args, "random", model, {"train_seconds": 0.0, "steps": 0},
                         head="linear probe (logistic regression on frozen CLS features of the 60k train images)",
                         module="random_init")
    return 0


if __name__ == "__main__":
    sys.exit(main())
