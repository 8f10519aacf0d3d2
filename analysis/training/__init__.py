"""Reproducible training recipes of the project's model zoo (``zoo:`` models), one command per regime.

``python -m analysis.training.supervised|mae|dino|random_init --out DIR --seed S`` trains (resumable with
``--resume``) and writes ``DIR/model.safetensors`` + ``DIR/run.json``; ``python -m analysis.training.publish
--run DIR`` evaluates it (:mod:`analysis.training.evaluate`) and publishes it into
``analysis/models/zoo_weights/`` with its manifest entry. Nothing here is imported by the analysis library.
"""
