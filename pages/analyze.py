"""Analyze: choose a model (zoo, package weights, cached timm, timm by name, local checkpoint, upload, or
any id), a dataset, the sample count and device; launch a job; follow its progress right below the Run
button; cancel it. The default choice is the product's default model (the supervised zoo ViT); impossible
settings are refused with their reason; a timm id whose weights can not be had fails at once."""

from __future__ import annotations

import hashlib

import streamlit as st
import torch

from analysis import defaults, jobs
from analysis.cache import atomic_write_bytes
from analysis.catalogue import (check_timm_weights, checkpoint_model_id, default_index, grouped, path_dataset_id,
                                path_families, timm_weights_cached, upload_file_name)
from analysis.cost import CostEstimate, estimate_run
from analysis.data import list_datasets
from analysis.errors import AnalysisError
from analysis.models import catalogue
from analysis.models.sources import check_architecture
from analysis.restrictions import check_upload_size
from analysis.settings import AnalysisSettings
from ui import frame, jobs_view, state, text

TIMM_BY_NAME = "timm by name"
CHECKPOINT = "local checkpoint"
UPLOAD = "upload a checkpoint"
ANY_MODEL = "any model id"
UPLOAD_FOLDER = "_uploads"


@st.cache_data(ttl=60, show_spinner=False)
def _catalogue():
    return grouped(catalogue())


@st.cache_data(ttl=60, show_spinner=False)
def _datasets() -> list[tuple[str, str, bool, str]]:
    return list(list_datasets())


def _launch(model_id: str, dataset_id: str, settings: AnalysisSettings) -> None:
    """Button callback: submit the job (plans now, so bad ids and settings fail here with one line)."""
    try:
        check_timm_weights(model_id)  # seconds, not timm's ~50 s of retries, when the weights cannot be had
        key = jobs.submit(model_id, dataset_id, settings)
    except AnalysisError as exc:
        state.notify("error", str(exc))
        return
    if state.entry_exists(key):
        state.open_analysis(key)
        state.notify("success", f"{model_id} on {dataset_id} was already analysed: opened it from the cache.")
    else:
        st.session_state[state.JOB] = key


@st.cache_data(show_spinner="Estimating time and memory from the layer shapes ...", max_entries=64)
def _estimate(model_id: str, dataset_id: str, settings: AnalysisSettings) -> CostEstimate | str:
    """The run's estimated cost, or the one-line reason it cannot run (unknown model, unreadable dataset)."""
    try:
        return estimate_run(model_id, dataset_id, settings)
    except AnalysisError as exc:
        return f"Cannot run: {exc}"


def _checked_arch(arch: str) -> str | None:
    """The architecture if timm knows it; otherwise show why not and return None."""
    if not arch.strip():
        st.caption("Give the timm architecture the weights belong to.")
        return None
    try:
        return check_architecture(arch.strip())
    except AnalysisError as exc:
        st.error(str(exc))
        return None


def _save_upload(uploaded) -> str:
    """Write an uploaded checkpoint into the cache (content-addressed, atomic) and return its path."""
    check_upload_size(uploaded.size)
    data = uploaded.getvalue()
    path = state.cache().root / UPLOAD_FOLDER / upload_file_name(uploaded.name, hashlib.sha256(data).hexdigest())
    if not path.is_file():
        atomic_write_bytes(path, data)
    return str(path)


def choose_model() -> str | None:
    """The model id the user picked (None while the choice is incomplete or invalid)."""
    groups = {group.name: group.entries for group in _catalogue()}
    sources = list(groups) + [TIMM_BY_NAME, CHECKPOINT, UPLOAD, ANY_MODEL]
    source = st.radio("Model source", sources, horizontal=True, key="analyze_model_source")
    if source in groups:
        options = list(groups[source])
        picked = st.selectbox("Model", options, index=default_index(options, defaults.DEFAULT_MODEL),
                              format_func=lambda e: f"{e.model_id} — {e.description}", key=f"analyze_model_{source}")
        return picked.model_id if picked else None
    if source == TIMM_BY_NAME:
        name = st.text_input("timm model name (with an optional pretrained tag)", placeholder="vit_base_patch16_224.dino",
                             key="analyze_timm_name").strip()
        if not name:
            st.caption("Pretrained weights come from the local Hugging Face cache (or the hub when online).")
            return None
        if _checked_arch(name) is None:
            return None
        cached = timm_weights_cached(name)
        st.caption(f"timm knows the architecture `{name.split('.', 1)[0]}`; its weights are "
                   + ("in the local Hugging Face cache." if cached else
                      "not in the local Hugging Face cache: Run downloads them, which needs internet."))
        return f"timm:{name}"
    if source in (CHECKPOINT, UPLOAD):
        if source == CHECKPOINT:
            path = st.text_input("Checkpoint path (.safetensors preferred; .pth/.pt read with weights_only)",
                                 key="analyze_ckpt_path").strip()
        else:
            uploaded = st.file_uploader("Checkpoint file", type=["safetensors", "pth", "pt"], key="analyze_upload")
            try:
                path = _save_upload(uploaded) if uploaded is not None else ""
            except AnalysisError as exc:  # too large for this server
                st.error(str(exc))
                path = ""
            if path:
                st.caption(f"Saved as `{path}`")
        arch = st.text_input("timm architecture of the weights", placeholder="vit_small_patch16_224", key="analyze_ckpt_arch")
        extra = st.text_input("Extra timm options (optional)", placeholder="img_size=28&patch_size=4", key="analyze_ckpt_opts")
        checked = _checked_arch(arch)
        if not path or checked is None:
            return None
        return checkpoint_model_id(path, arch, extra)
    model_id = st.text_input("Model id", value=defaults.DEFAULT_MODEL, key="analyze_any_model",
                             help="timm:<name>[.tag], random:<arch>[?seed=N&...], file:<path>?arch=<arch>, zoo:<name>, pkg:<name>")
    return model_id.strip() or None


def choose_dataset() -> str | None:
    rows = _datasets()
    available = [(d, desc) for d, desc, ok, _ in rows if ok]
    by_path = path_families()
    kinds = ["offered here", *by_path, "any dataset id"]
    kind = st.radio("Dataset source", kinds, horizontal=True, key="analyze_dataset_source")
    if kind == "offered here":
        ids = [d for d, _ in available]
        start = ids.index(defaults.DEFAULT_DATASET) if defaults.DEFAULT_DATASET in ids else 0
        descriptions = dict(available)
        picked = st.selectbox("Dataset", ids, index=start if ids else None, key="analyze_dataset",
                              format_func=lambda d: f"{d} — {descriptions.get(d, '')}")
        missing = [(d, reason) for d, _, ok, reason in rows if not ok]
        if missing:
            st.caption("Not available here: " + "; ".join(f"`{d}` ({reason})" for d, reason in missing))
        return picked
    if kind == "any dataset id":
        value = st.text_input("Dataset id", value=defaults.DEFAULT_DATASET, key="analyze_any_dataset")
        return value.strip() or None
    family = by_path[kind]
    path = st.text_input(f"{kind} path", key=f"analyze_path_{family.name}", help=family.path.help or None)
    return path_dataset_id(kind, path) if path.strip() else None


def choose_settings() -> AnalysisSettings | None:
    """The settings typed, or None (with the reason shown) when one is impossible, e.g. 0 images."""
    e_in, e_out = state.energies()
    cols = st.columns(4)
    with cols[0]:
        every = st.checkbox("every image", value=defaults.DEFAULT_SAMPLES is None, key="analyze_all")
    with cols[1]:
        # no min_value: Streamlit would silently snap 0 back; the settings check below says why it is refused
        samples = st.number_input("images (seeded sample)", value=defaults.DEFAULT_SAMPLES or 2000,
                                  step=100, disabled=every, key="analyze_samples")
    with cols[2]:
        seed = st.number_input("seed", value=0, step=1, key="analyze_seed")
    with cols[3]:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        device = st.selectbox("device", devices, index=len(devices) - 1, key="analyze_device",
                              help="cuda is offered only when this machine has a usable GPU.")
    with st.expander("Advanced"):
        a, b, c, d = st.columns(4)
        batch = a.number_input("batch size (0 = automatic)", min_value=0, value=0, step=16, key="analyze_batch")
        tokens = b.number_input("tokens per image (0 = every token)", min_value=0, value=0, step=16, key="analyze_tokens",
                                help="A seeded subset of token/position vectors per image, to save time on big inputs.")
        precisions = ["fp32", "bf16"] + (["fp16"] if device != "cpu" else [])
        precision = c.selectbox("forward precision", precisions, key="analyze_precision",
                                help="Autocast of the forward pass; statistics always accumulate in float32 or better.")
        keep = d.checkbox("keep raw second moments", value=False, key="analyze_keep",
                          help="Needed later to re-project or compress; large (d² floats per layer).")
        e, f = st.columns(2)
        max_width = e.number_input("skip layers wider than (0 = none)", min_value=0, value=0, step=256,
                                   key="analyze_max_width",
                                   help="Layers whose d_in or d_out exceeds this are listed, not analysed "
                                        "(their d x d statistics and eigen-decompositions cost the most).")
        patterns = f.text_input("only layers matching (comma-separated globs)", value="", key="analyze_layers",
                                help="For example blocks.*.attn.qkv,blocks.*.mlp.fc1; empty = every layer.")
    with st.expander("Research settings: which tokens, centring, error bars"):
        g, h, i = st.columns([2, 1, 1])
        token_set = g.text_input(
            "token set", value="all", key="analyze_token_set",
            help="all · cls (class token only) · patch (no class/distillation/register tokens) · no-registers · "
                 "no-outliers:Q (drop the Q % highest-norm vectors per image) · centre:F (central F of each side "
                 "of every spatial grid).")
        centred = h.checkbox("centred statistics", value=False, key="analyze_centred",
                             help="Decompose C - s s^T / N (the scatter about the mean) instead of the uncentred moment.")
        uncertain = i.checkbox("error bars and convergence", value=True, key="analyze_uncertainty",
                               help="Split-half error bars and the convergence curve: twice the running-sum "
                                    "memory and a few extra eigenvalue decompositions.")
    st.caption(f"Energies come from the sidebar (now e_in = {text.energy(e_in)}, e_out = {text.energy(e_out)}); "
               "they can be changed at any time afterwards without recomputing.")
    try:
        return AnalysisSettings(
            samples=None if every else int(samples), seed=int(seed), energy_in=e_in, energy_out=e_out, device=device,
            batch_size=int(batch) or None, tokens_per_image=int(tokens) or None, precision=precision,
            keep_moments=keep, max_width=int(max_width) or None,
            layers=tuple(p.strip() for p in patterns.split(",") if p.strip()) or None,
            token_set=token_set, centred=centred, uncertainty=uncertain,
        ).validated()
    except AnalysisError as exc:
        st.error(f"Cannot run with these settings: {exc}.")
        return None


frame.intro("Analyze", text.ANALYZE_INTRO, lead=text.ANALYZE_LEAD)

following = state.is_key(st.session_state.get(state.JOB))

st.subheader("1. Model")
model_id = choose_model()
st.subheader("2. Dataset")
dataset_id = choose_dataset()
st.subheader("3. Settings")
settings = choose_settings()

ready = bool(model_id and dataset_id and settings is not None)
if ready:
    st.caption(f"Will analyse `{model_id}` on `{dataset_id}`.")
    cost = _estimate(model_id, dataset_id, settings)
    if isinstance(cost, str):
        st.error(cost)
        ready = False
    elif not cost.fits:
        st.error(f"This run would not fit this machine: {cost.summary()}. Skip wide layers or pick layers "
                 "under Advanced.")
        ready = False
    else:
        st.caption(f"Estimate before running: {cost.summary()} (from the layer shapes; a cached result opens "
                   "at once).")
st.button(
    "Run analysis", type="primary", icon=":material/play_arrow:", disabled=not ready or following,
    on_click=_launch, args=(model_id, dataset_id, settings), key="analyze_launch",
    help="A cached result opens at once; otherwise a worker process runs it and its progress shows below.",
)
# the progress right below the button, where the user is looking after pressing it
following = jobs_view.job_panel()
if following:
    st.caption("One analysis at a time per session: wait for the one above or cancel it.")

current = state.current_result()
if current is not None:
    st.divider()
    st.markdown(f"**Open now:** `{current.meta.model_id}` on `{current.meta.dataset_id}` "
                f"({text.count(current.meta.n_images)} images), MLU {text.pct(current.mlu)}.")
    st.page_link("pages/layers.py", label="See it on the Layers page", icon=":material/bar_chart:")
