"""Objects as well as ids: analyze(model, data) with any nn.Module and any Dataset, DataLoader or iterable of
image batches; the same engine and numbers as ids, keys from what was read, and one clear error for bad
objects (analysis.models.model_objects, analysis.data.data_objects)."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from analysis import AnalysisError, analyze
from analysis.data import load_dataset
from analysis.errors import DatasetError, UnknownModelError, UnsupportedModelError
from analysis.models import load
from analysis.settings import AnalysisSettings, setting_fields
from tests.helpers import TINY_VIT

DATASET = "fashion-mnist:test"


class SmallNet(nn.Module):
    """A custom module: a convolution, then two Linears, with dropout (so its mode matters)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, stride=2)
        self.drop = nn.Dropout(0.5)
        self.fc1 = nn.Linear(6 * 3 * 3, 20)
        self.fc2 = nn.Linear(20, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.drop(torch.relu(self.conv(x)).flatten(1)))))


class Counting(Dataset):
    """Fixed images; counts how often an item is read; ``noise`` adds random augmentation."""

    def __init__(self, images: torch.Tensor, noise: float = 0.0) -> None:
        self.images, self.noise, self.reads = images, noise, 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        self.reads += 1
        image = self.images[i]
        return (image + self.noise * torch.randn_like(image) if self.noise else image), i % 5


@pytest.fixture()
def images() -> torch.Tensor:
    return torch.randn(48, 1, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.fixture()
def net() -> SmallNet:
    torch.manual_seed(0)
    return SmallNet()


def test_objects_give_the_numbers_of_the_ids(tmp_path):
    """The same timm module and the same images, given as objects, give the id's table bit for bit."""
    by_id = analyze(TINY_VIT, DATASET, samples=48, cache_dir=str(tmp_path))
    loaded = load(TINY_VIT)
    dataset = load_dataset(DATASET, data_config=loaded.data_config, samples=48)
    by_object = analyze(loaded.model, dataset, cache_dir=str(tmp_path))
    assert by_object.key != by_id.key and by_object.meta.model_id == "object:VisionTransformer"
    columns = ["layer", "kind", "block", "n_samples", "k_in", "k_out", "utilization", "in_mlu", "status"]
    assert by_object.layers[columns].equals(by_id.layers[columns])
    for a, b in zip(by_object.spectra, by_id.spectra):
        np.testing.assert_array_equal(a.eig_in, b.eig_in)
        np.testing.assert_array_equal(a.extras["half.a.eig_out"], b.extras["half.a.eig_out"])
    assert by_object.mlu == by_id.mlu and by_object.mlu_err == by_id.mlu_err
    loader = DataLoader(dataset, batch_size=32)  # the same images through the user's own loader
    assert analyze(loaded.model, loader, use_cache=False).layers[columns].equals(by_id.layers[columns])


def test_a_known_dataset_is_read_once_to_find_the_cache_and_twice_on_a_miss(tmp_path, net, images):
    data = Counting(images)
    forwards = []
    net.register_forward_hook(lambda *_: forwards.append(1))
    first = analyze(net, data, cache_dir=str(tmp_path))
    assert data.reads == 2 * len(images) and forwards and first.key is not None and not first.meta.data_note
    data.reads, forwards[:] = 0, []
    again = analyze(net, data, cache_dir=str(tmp_path))
    assert again.key == first.key and data.reads == len(images) and not forwards  # a hit: no forward pass
    changed = Counting(images.flip(0))
    assert analyze(net, changed, cache_dir=str(tmp_path)).key != first.key  # other tensors, another key
    with torch.no_grad():
        net.fc2.bias += 1.0
    assert analyze(net, data, cache_dir=str(tmp_path)).key != first.key  # other weights, another key


def test_data_that_cannot_be_identified_is_analysed_but_not_stored(tmp_path, net, images):
    shuffled = analyze(net, DataLoader(TensorDataset(images), batch_size=16, shuffle=True), cache_dir=str(tmp_path))
    assert shuffled.key is None and "shuffle=True" in shuffled.warnings[0]
    augmented = analyze(net, Counting(images, noise=0.1), cache_dir=str(tmp_path))
    assert augmented.key is None and "read a second time" in augmented.warnings[0]
    one_shot = analyze(net, (b for b in images.split(16)), cache_dir=str(tmp_path))
    assert one_shot.key is None and "one-shot iterator" in one_shot.warnings[0] and one_shot.meta.n_images == 48
    assert not list(tmp_path.glob("*/manifest.json"))  # nothing stored
    named = analyze(net, Counting(images, noise=0.1), data_id="augmented-v1", cache_dir=str(tmp_path))
    assert named.key is not None and named.meta.dataset_id == "object:augmented-v1" and not named.meta.data_note
    again = analyze(net, (b for b in images.split(16)), data_id="augmented-v1", cache_dir=str(tmp_path))
    assert again.key == named.key  # the caller vouched for the name: a hit


def test_samples_select_like_ids_for_a_dataset_and_keep_the_first_images_of_a_loader(net, images):
    subset = analyze(net, TensorDataset(images), samples=20, seed=3, use_cache=False)
    chosen = np.sort(np.random.default_rng(3).permutation(48)[:20])
    direct = analyze(net, TensorDataset(images[chosen]), use_cache=False)
    assert subset.meta.n_images == 20 and subset.layers["k_out"].tolist() == direct.layers["k_out"].tolist()
    first = analyze(net, DataLoader(TensorDataset(images), batch_size=16), samples=20, use_cache=False)
    direct = analyze(net, [images[:16], images[16:20]], use_cache=False)
    assert first.meta.n_images == 20 and first.layers["k_out"].tolist() == direct.layers["k_out"].tolist()


def test_the_model_object_is_given_back_as_it_was(net, images):
    net.train()
    net.drop.eval()
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    analyze(net, [images], use_cache=False)
    assert net.training and not net.drop.training  # every submodule's own flag
    assert all(torch.equal(weights[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize("data, message", [
    ([], "yielded no images"),
    ([np.zeros((2, 1, 8, 8), dtype=np.float32)], "gives a numpy.ndarray, not a tensor"),
    ([torch.zeros(2, 1, 8, 8, dtype=torch.uint8)], "gives uint8 images"),
    ([torch.zeros(8, 8)], r"shape \(8, 8\): expected images \(B, C, H, W\)"),
    ([torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 9, 9)], r"shape \(1, 9, 9\) after \(1, 8, 8\)"),
    ([{"x": torch.zeros(2, 1, 8, 8)}], "dict without images"),
    (TensorDataset(torch.zeros(0, 1, 8, 8)), "yielded no images"),
    (42, "must be a dataset id .* got a int"),
])
def test_bad_data_objects_get_one_clear_error(net, data, message):
    with pytest.raises(DatasetError, match=message):
        analyze(net, data, use_cache=False)


def test_bad_model_objects_get_one_clear_error(images):
    with pytest.raises(UnsupportedModelError, match="no nn.Linear or nn.Conv2d layer"):
        analyze(nn.Sequential(nn.ReLU(), nn.Flatten()), [images])
    with pytest.raises(UnsupportedModelError, match=r"float16 weights; analyse a float32 copy \(model.float\(\)\)"):
        analyze(SmallNet().half(), [images])
    with pytest.raises(UnknownModelError, match="must be a model id .* or a torch.nn.Module"):
        analyze(object(), [images])
    with pytest.raises(AnalysisError, match="names no preprocessing of its own: pass data_config="):
        analyze(SmallNet(), DATASET, samples=4)
    with pytest.raises(AnalysisError, match=r"failed on a batch of object:list \(input \(2, 3, 8, 8\)\)"):
        analyze(SmallNet(), [torch.zeros(2, 3, 8, 8)], use_cache=False)


def test_a_model_object_with_a_dataset_id_uses_the_given_preprocessing(net):
    config = {"input_size": (1, 8, 8), "mean": (0.5,), "std": (0.25,)}
    result = analyze(net, DATASET, samples=16, data_config=config, use_cache=False)
    assert result.meta.n_images == 16 and result.meta.data_config["input_size"] == [1, 8, 8]


def test_settings_and_keywords_and_the_old_positional_call_agree(tmp_path):
    keywords = analyze(TINY_VIT, DATASET, samples=16, seed=2, energy_in=0.95, energy_out=0.9, cache_dir=str(tmp_path))
    positional = analyze(TINY_VIT, DATASET, 16, 2, 0.95, 0.9, cache_dir=str(tmp_path))
    settings = analyze(TINY_VIT, DATASET, AnalysisSettings(samples=16, seed=2, energy_in=0.95), energy_out=0.9,
                       cache_dir=str(tmp_path))
    old_name = analyze(TINY_VIT, dataset=DATASET, samples=16, seed=2, energy_in=0.95, energy_out=0.9,
                       cache_dir=str(tmp_path))
    for other in (positional, settings, old_name):
        assert other.key == keywords.key and (other.energy_in, other.energy_out) == (0.95, 0.9)
    with pytest.raises(TypeError, match="unexpected keyword argument 'sample' \\(did you mean 'samples'\\?\\)"):
        analyze(TINY_VIT, DATASET, sample=16)


def test_the_command_line_options_are_the_settings_fields():
    from analysis.cli import build_parser, settings_from_args

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    run, timeline = sub.choices["run"], sub.choices["timeline"]
    run_dests = {a.dest: a for a in run._actions}
    for spec in setting_fields():
        action = run_dests[spec.name]
        assert action.help == spec.metadata["help"] and action.default == spec.default
        assert spec.name == "layers" or spec.name in {a.dest for a in timeline._actions}
    args = parser.parse_args(["run", "--samples", "5", "--tokens", "patch", "--no-uncertainty", "--layers", "a,b"])
    assert settings_from_args(args) == AnalysisSettings(samples=5, token_set="patch", uncertainty=False, layers="a,b")
    args = parser.parse_args(["timeline", "--series", "zoo:x", "--layers", "--centred", "--energy-in", "0.9"])
    assert args.print_layers and settings_from_args(args) == AnalysisSettings(centred=True, energy_in=0.9)


def test_a_result_of_objects_says_why_no_command_recreates_it(net, images, tmp_path):
    from analysis.card import reproducibility_card

    card = reproducibility_card(analyze(net, TensorDataset(images), cache_dir=str(tmp_path)))
    assert card["reproduce"] is None and "made from Python objects (object:SmallNet, object:TensorDataset)" \
        in card["reproduce_note"]
    assert card["model"]["weights_fingerprint"] and card["dataset"]["fingerprint"]
