"""Analyze: choose a model (zoo, package weights, cached timm, timm by name, local checkpoint, upload, or
any id), a dataset, the sample count and device; launch a job; follow its progress right below the Run
button; cancel it. The default choice is the product's default model (the supervised zoo ViT); impossible
settings are refused with their reason; a timm id whose weights can not be had fails at once.

What opens is what was asked: Run stays disabled (and says so) until the estimate of the settings on screen
is ready, and the estimate carries the content key those settings give. The button's callback checks that
the widgets still hold the values the button was drawn for (a click on a stale button while a new estimate
is being made is refused, never run with the old settings), and that the job's key is the estimated one. A
run estimated above ten minutes asks first. A job link (``?job=KEY``) shows that job's settings in the form.
Below, the machine's jobs (running, waiting, failed or cancelled lately) stay listed after a reload."""

from __future__ import annotations

import hashlib

import streamlit as st
import torch

import ui  # noqa: F401  first: the whole app's modules in one thread at a time (ui/__init__.py)
from analysis import calibration, defaults, jobs
from analysis.cache import atomic_write_bytes
from analysis.catalogue import (check_timm_weights, checkpoint_model_id, default_index, grouped, path_dataset_id,
                                path_families, timm_weights_cached, upload_file_name)
from analysis.cost import CostEstimate, estimate_plan
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
CONFIRM = "analyze_confirm"  # a long run waiting for the user's yes: (model_id, dataset_id, settings, key)
# Counts the form's changes: every widget's on_change adds one. The Run button is drawn with the count it saw;
# a click that arrives after a change (a stale button, clicked while the new estimate was being made) finds
# another count and starts nothing. A change's callback runs before the next click's, so this has no race.
GENERATION = "analyze_generation"


DRAWN: list[str] = []  # the form's widget keys drawn in this run (a page runs as a fresh module each time)


def _changed() -> None:
    st.session_state[GENERATION] = st.session_state.get(GENERATION, 0) + 1


def _w(key: str) -> dict:
    """A form widget's ``key`` and change counter, its key noted as drawn in this run."""
    DRAWN.append(key)
    return {"key": key, "on_change": _changed}


def _on_screen() -> dict[str, str]:
    """What the form's widgets drawn in this run hold (Streamlit applies a message's new values before any
    callback runs, so a callback compares these with what a button was drawn for, whatever the order)."""
    return {key: repr(st.session_state.get(key)) for key in DRAWN}


@st.cache_data(ttl=60, show_spinner=False)
def _catalogue():
    return grouped(catalogue())


@st.cache_data(ttl=60, show_spinner=False)
def _datasets() -> list[tuple[str, str, bool, str]]:
    return list(list_datasets())


def _launch(model_id: str, dataset_id: str, settings: AnalysisSettings, key: str, generation: int,
            drawn_for: dict[str, str], long_run: bool) -> None:
    """Run button callback: start the analysis the button was drawn for, only if the form still says so."""
    now = {k: repr(st.session_state.get(k)) for k in drawn_for}
    if st.session_state.get(GENERATION, 0) != generation or now != drawn_for:  # changed after the button was drawn
        state.notify("warning", "The settings changed while their estimate was being made, so nothing was started: "
                                "check the new estimate and press Run again.")
        return
    if long_run:
        st.session_state[CONFIRM] = (model_id, dataset_id, settings, key)
        return
    _submit(model_id, dataset_id, settings, key)


def _submit(model_id: str, dataset_id: str, settings: AnalysisSettings, key: str) -> None:
    """Submit (or open from the cache) the analysis whose estimated key is ``key``."""
    st.session_state.pop(CONFIRM, None)
    try:
        check_timm_weights(model_id)  # seconds, not timm's ~50 s of retries, when the weights cannot be had
        submitted = jobs.submit(model_id, dataset_id, settings)
    except AnalysisError as exc:
        state.notify("error", str(exc))
        return
    if submitted != key:  # the model file or dataset changed between the estimate and the click
        state.notify("warning", f"{model_id} on {dataset_id} now gives key {text.short_key(submitted)}, not the "
                                f"estimated {text.short_key(key)} (its weights or data changed); it runs as that.")
    if state.entry_exists(submitted):
        state.open_analysis(submitted)
        state.notify("success", f"{model_id} on {dataset_id} was already analysed: opened it from the cache.")
    else:
        st.session_state[state.JOB] = submitted


class Estimate:
    """The estimate of one request: its content key, memory (:mod:`analysis.cost`), time here
    (:mod:`analysis.calibration`) and whether it is cached already."""

    def __init__(self, key: str, cost: CostEstimate, time: calibration.TimeEstimate | None, cached: bool) -> None:
        self.key, self.cost, self.time, self.cached = key, cost, time, cached

    def words(self) -> str:
        if self.cached:
            return f"already analysed (key `{text.short_key(self.key)}`): Run opens it at once."
        memory = self.cost.summary().split(", ", 1)[1] if ", " in self.cost.summary() else ""
        if self.time is None:
            when = "time unknown"
        else:
            basis = {"same architecture": "this machine's speed on this architecture",
                     "other runs": "this machine's speed on other models",
                     "measured rates only": "this machine's measured speed; no run here yet"}[self.time.basis]
            when = f"{text.duration_range(self.time.low, self.time.high)} here ({basis})"
        return f"{when}; {memory}; stored under key `{text.short_key(self.key)}`."


@st.cache_resource(show_spinner=False, max_entries=64, ttl=120)
def _estimate(model_id: str, dataset_id: str, settings: AnalysisSettings, root: str) -> Estimate | str:
    """The run's estimate, or the one-line reason it cannot run (unknown model, unreadable dataset)."""
    try:
        the_plan = jobs.api.plan_request(model_id, dataset_id, settings)
        cost = estimate_plan(the_plan)
        cached = state.cache().has(the_plan.key)
        time = None if cached else calibration.predict(calibration.work_of(the_plan), root)
        return Estimate(the_plan.key, cost, time, cached)
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
    source = st.radio("Model source", sources, horizontal=True, **_w("analyze_model_source"),
                      index=_index(sources, "analyze_model_source", 0))
    if source in groups:
        options = list(groups[source])
        # the box shows the id alone (the descriptions are long: with them the box cut its text off) and the
        # chosen model's description is written out under it
        picked = st.selectbox("Model", options, index=default_index(options, defaults.DEFAULT_MODEL),
                              format_func=lambda e: e.model_id, **_w(f"analyze_model_{source}"))
        if picked is not None and picked.description:
            st.caption(picked.description)
        return picked.model_id if picked else None
    if source == TIMM_BY_NAME:
        name = st.text_input("timm model name (with an optional pretrained tag)", placeholder="vit_base_patch16_224.dino",
                             **_w("analyze_timm_name")).strip()
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
                                 **_w("analyze_ckpt_path")).strip()
        else:
            uploaded = st.file_uploader("Checkpoint file", type=["safetensors", "pth", "pt"], **_w("analyze_upload"))
            try:
                path = _save_upload(uploaded) if uploaded is not None else ""
            except AnalysisError as exc:  # too large for this server
                st.error(str(exc))
                path = ""
            if path:
                st.caption(f"Saved as `{path}`")
        arch = st.text_input("timm architecture of the weights", placeholder="vit_small_patch16_224",
                             **_w("analyze_ckpt_arch"))
        extra = st.text_input("Extra timm options (optional)", placeholder="img_size=28&patch_size=4",
                              **_w("analyze_ckpt_opts"))
        checked = _checked_arch(arch)
        if not path or checked is None:
            return None
        return checkpoint_model_id(path, arch, extra)
    model_id = st.text_input("Model id", value=_start("analyze_any_model", defaults.DEFAULT_MODEL),
                             **_w("analyze_any_model"),
                             help="timm:<name>[.tag], random:<arch>[?seed=N&...], file:<path>?arch=<arch>, zoo:<name>, pkg:<name>")
    return model_id.strip() or None


def choose_dataset() -> str | None:
    rows = _datasets()
    available = [(d, desc) for d, desc, ok, _ in rows if ok]
    by_path = path_families()
    kinds = ["offered here", *by_path, "any dataset id"]
    kind = st.radio("Dataset source", kinds, horizontal=True, **_w("analyze_dataset_source"),
                    index=_index(kinds, "analyze_dataset_source", 0))
    if kind == "offered here":
        ids = [d for d, _ in available]
        start = ids.index(defaults.DEFAULT_DATASET) if defaults.DEFAULT_DATASET in ids else 0
        descriptions = dict(available)
        picked = st.selectbox("Dataset", ids, index=start if ids else None, **_w("analyze_dataset"),
                              format_func=lambda d: f"{d} — {descriptions.get(d, '')}")
        missing = [(d, reason) for d, _, ok, reason in rows if not ok]
        if missing:
            st.caption("Not available here: " + "; ".join(f"`{d}` ({reason})" for d, reason in missing))
        return picked
    if kind == "any dataset id":
        value = st.text_input("Dataset id", value=_start("analyze_any_dataset", defaults.DEFAULT_DATASET),
                              **_w("analyze_any_dataset"))
        return value.strip() or None
    family = by_path[kind]
    path = st.text_input(f"{kind} path", **_w(f"analyze_path_{family.name}"), help=family.path.help or None)
    return path_dataset_id(kind, path) if path.strip() else None


def choose_settings() -> AnalysisSettings | None:
    """The settings typed, or None (with the reason shown) when one is impossible, e.g. 0 images."""
    e_in, e_out = state.energies()
    cols = st.columns(4)
    with cols[0]:
        every = st.checkbox("every image", value=_start("analyze_all", defaults.DEFAULT_SAMPLES is None),
                            **_w("analyze_all"))
    with cols[1]:
        # no min_value: Streamlit would silently snap 0 back; the settings check below says why it is refused
        samples = st.number_input("images (seeded sample)", value=_start("analyze_samples", defaults.DEFAULT_SAMPLES or 2000),
                                  step=100, disabled=every, **_w("analyze_samples"))
    with cols[2]:
        seed = st.number_input("seed", value=_start("analyze_seed", 0), step=1, **_w("analyze_seed"))
    with cols[3]:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        device = st.selectbox("device", devices, index=len(devices) - 1, **_w("analyze_device"),
                              help="cuda is offered only when this machine has a usable GPU.")
    with st.expander("Advanced"):
        a, b, c, d = st.columns(4)
        batch = a.number_input("batch size (0 = automatic)", min_value=0, value=_start("analyze_batch", 0), step=16,
                               **_w("analyze_batch"))
        tokens = b.number_input("tokens per image (0 = every token)", min_value=0, value=_start("analyze_tokens", 0),
                                step=16, **_w("analyze_tokens"),
                                help="A seeded subset of token/position vectors per image, to save time on big inputs.")
        precisions = ["fp32", "bf16"] + (["fp16"] if device != "cpu" else [])
        precision = c.selectbox("forward precision", precisions, **_w("analyze_precision"),
                                index=_index(precisions, "analyze_precision", 0),
                                help="Autocast of the forward pass; statistics always accumulate in float32 or better.")
        keep = d.checkbox("keep raw second moments", value=_start("analyze_keep", False), **_w("analyze_keep"),
                          help="Needed later to re-project or compress; large (d² floats per layer).")
        e, f = st.columns(2)
        max_width = e.number_input("skip layers wider than (0 = none)", min_value=0, value=_start("analyze_max_width", 0),
                                   step=256,
                                   **_w("analyze_max_width"),
                                   help="Layers whose d_in or d_out exceeds this are listed, not analysed "
                                        "(their d x d statistics and eigen-decompositions cost the most).")
        patterns = f.text_input("only layers matching (comma-separated globs)", value=_start("analyze_layers", ""),
                                **_w("analyze_layers"),
                                help="For example blocks.*.attn.qkv,blocks.*.mlp.fc1; empty = every layer.")
    with st.expander("Research settings: which tokens, centring, error bars"):
        g, h, i = st.columns([2, 1, 1])
        token_set = g.text_input(
            "token set", value=_start("analyze_token_set", "all"), **_w("analyze_token_set"),
            help="all · cls (class token only) · patch (no class/distillation/register tokens) · no-registers · "
                 "no-outliers:Q (drop the Q % highest-norm vectors per image) · centre:F (central F of each side "
                 "of every spatial grid).")
        centred = h.checkbox("centred statistics", value=_start("analyze_centred", False), **_w("analyze_centred"),
                             help="Decompose C - s s^T / N (the scatter about the mean) instead of the uncentred moment.")
        uncertain = i.checkbox("error bars and convergence", value=_start("analyze_uncertainty", True),
                               **_w("analyze_uncertainty"),
                               help="Split-half error bars and the convergence curve: twice the running-sum "
                                    "memory and a few extra eigenvalue decompositions.")
    st.caption(f"Energies come from the sidebar (now e_in = {text.energy(e_in)}, e_out = {text.energy(e_out)}); "
               "they can be changed at any time afterwards without recomputing.")
    try:
        return AnalysisSettings(
            samples=None if every else int(samples), seed=int(seed), energy_in=e_in, energy_out=e_out, device=device,
            batch_size=int(batch) or None, tokens_per_image=int(tokens) or None, precision=precision,
            keep_moments=keep, max_width=int(max_width) or None,
            layers=patterns if patterns.strip() else None,  # "," is refused with its reason, not read as "all"
            token_set=token_set, centred=centred, uncertainty=uncertain,
        ).validated()
    except AnalysisError as exc:
        st.error(f"Cannot run with these settings: {exc}.")
        return None


def _job_defaults(request: dict) -> dict:
    """The form's starting values that show a followed job's settings (a ``?job=`` link on a fresh session):
    its model and dataset as ids, its sample count, seed and the other settings."""
    model_id, dataset_id = request.get("model_id"), request.get("dataset_id")
    settings = request.get("settings") or {}
    if not model_id or not dataset_id:
        return {}
    found = {"analyze_model_source": ANY_MODEL, "analyze_any_model": str(model_id),
             "analyze_dataset_source": "any dataset id", "analyze_any_dataset": str(dataset_id),
             "analyze_all": settings.get("samples") is None}
    if settings.get("samples") is not None:
        found["analyze_samples"] = int(settings["samples"])
    for field, key in (("seed", "analyze_seed"), ("batch_size", "analyze_batch"), ("tokens_per_image", "analyze_tokens"),
                       ("max_width", "analyze_max_width")):
        found[key] = int(settings.get(field) or 0)
    for field, key in (("token_set", "analyze_token_set"), ("precision", "analyze_precision")):
        if settings.get(field):
            found[key] = str(settings[field])
    for field, key in (("keep_moments", "analyze_keep"), ("centred", "analyze_centred"),
                       ("uncertainty", "analyze_uncertainty")):
        if field in settings:
            found[key] = bool(settings[field])
    if settings.get("layers"):
        found["analyze_layers"] = ",".join(settings["layers"])
    return found


FROM_JOB: dict = {}  # starting values from a followed job (_job_defaults); empty otherwise


def _start(key: str, fallback):
    return FROM_JOB.get(key, fallback)


def _index(options: list, key: str, fallback: int) -> int:
    value = FROM_JOB.get(key)
    return options.index(value) if value in options else fallback


frame.intro("Analyze", text.ANALYZE_INTRO, lead=text.ANALYZE_LEAD)
adopted = st.session_state.pop(state.JOB_REQUEST, None)
if adopted:
    FROM_JOB.update(_job_defaults(adopted))
    st.info("These are the settings of the job the link follows; its progress is below the Run button.")

following = state.is_key(st.session_state.get(state.JOB))

st.subheader("1. Model")
model_id = choose_model()
st.subheader("2. Dataset")
dataset_id = choose_dataset()
st.subheader("3. Settings")
settings = choose_settings()

ready = bool(model_id and dataset_id and settings is not None)
generation = st.session_state.get(GENERATION, 0)
where = st.empty()  # the estimate, then what it says
slot = st.empty()  # the Run button: disabled until the estimate of the settings on screen is ready
slot.button("Run analysis", type="primary", icon=":material/hourglass_empty:", disabled=True, key="analyze_launch_wait",
            help="Waiting for the estimate of the settings on screen.")
estimate = None
if ready:
    where.caption(f"Estimating time and memory for `{model_id}` on `{dataset_id}`: loading the model and timing it "
                  "on a few images ...")
    estimate = _estimate(model_id, dataset_id, settings, str(state.cache().root))
    if isinstance(estimate, str):
        where.error(estimate)
        ready = False
    elif not estimate.cost.fits:
        where.error(f"This run would not fit this machine: {estimate.cost.summary()}. Skip wide layers or pick layers "
                    "under Advanced.")
        ready = False
    else:
        where.caption(f"Will analyse `{model_id}` on `{dataset_id}`: {estimate.words()}")
else:
    where.caption("Choose a model, a dataset and valid settings to see the estimate.")
long_run = bool(ready and estimate.time is not None and estimate.time.long)
slot.button(
    "Run analysis", type="primary", icon=":material/play_arrow:", disabled=not ready or following,
    on_click=_launch, key="analyze_launch",
    args=(model_id, dataset_id, settings, estimate.key if ready else "", generation, _on_screen(), long_run),
    help="A cached result opens at once; otherwise the analysis waits for its turn on this machine and runs in a "
         "worker process, its progress below." + (" Estimated above ten minutes: you are asked first." if long_run
                                                   else ""),
)
if CONFIRM in st.session_state:
    asked = st.session_state[CONFIRM]
    with st.container(border=True):
        st.warning(f"`{asked[0]}` on `{asked[1]}` is estimated at {estimate.words() if ready else 'over ten minutes'} "
                   "The machine runs one analysis at a time, so everyone else's wait behind it. Run it anyway?",
                   icon=":material/schedule:")
        yes, no = st.columns(2)
        yes.button("Yes, run it", type="primary", key="analyze_confirm_yes", on_click=_submit, args=asked,
                   width="stretch")
        no.button("Not now", key="analyze_confirm_no", on_click=lambda: st.session_state.pop(CONFIRM, None),
                  width="stretch")
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
st.divider()
jobs_view.machine_jobs()
