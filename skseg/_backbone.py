"""Building timm Vision Transformers, loading their weights, and reading their
attention facets through forward hooks."""

import functools
import os
import re
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
import weakref
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

from ._features import FACETS  # noqa: F401  (re-exported)

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")

_MODELS = {}
_MODELS_LOCK = threading.Lock()
# One lock per model instance: a forward pass with its hooks is one critical section.
_FORWARD_LOCKS = weakref.WeakKeyDictionary()
_FORWARD_LOCKS_LOCK = threading.Lock()

# Offline, the hub client retries for about a minute; a reachability check that
# gives up after this many seconds fails fast instead.
HUB_CHECK_TIMEOUT_S = 3.0


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could neither be downloaded nor found locally.

    Parameters
    ----------
    model : str
        The timm model name whose weights were asked for.
    reason : str
        Why they could not be had, without advice (callers such as the
        command line word the advice with their own options).

    Attributes
    ----------
    model : str
    reason : str
    """

    def __init__(self, model, reason):
        self.model = model
        self.reason = reason
        super().__init__(
            f"Pretrained weights for {model!r} could not be loaded: {reason}. Without "
            "network access, either download the weights elsewhere and pass "
            "weights='/path/to/file.safetensors' (timm or original DINO/DINOv2/DINOv3 "
            "format), copy a filled Hugging Face hub cache to this machine (HF_HOME), "
            "or pass pretrained=False for random weights."
        )

    def __reduce__(self):
        return type(self), (self.model, self.reason)


def resolve_device(device):
    """Map ``"auto"`` to the best available torch device."""
    if device != "auto":
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' was asked for, but CUDA is not available.")
        if device == "mps" and not torch.backends.mps.is_available():
            raise ValueError("device='mps' was asked for, but MPS is not available.")
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def check_model_name(name):
    import timm

    arch = name.split(".", 1)[0]
    if not timm.is_model(arch):
        raise ValueError(
            f"model={name!r} is not a timm model; try e.g. 'vit_small_patch8_224.dino', "
            "'vit_small_patch14_reg4_dinov2.lvd142m' or 'vit_small_patch16_dinov3.lvd1689m'."
        )


def weights_identity(weights):
    """What identifies a weights file: its resolved path, size and mtime."""
    if weights is None:
        return None
    path = Path(weights).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"weights file {os.fspath(weights)!r} does not exist.")
    stat = path.stat()
    return (str(path), stat.st_size, stat.st_mtime_ns)


def _vit_kwargs():
    # dynamic_img_size lets one model take any multiple of its patch size.
    return dict(num_classes=0, dynamic_img_size=True)


def _check_is_vit(name):
    """Refuse a timm model that is not a plain ViT before building or downloading it."""
    advice = (
        "skseg needs a Vision Transformer with a patch grid, e.g. "
        "'vit_small_patch8_224.dino', 'vit_small_patch14_reg4_dinov2.lvd142m' or "
        "'vit_small_patch16_dinov3.lvd1689m'."
    )
    try:
        model = _meta_model(name)
    except TypeError as exc:  # e.g. resnet50: "unexpected keyword argument 'dynamic_img_size'"
        raise ValueError(f"model={name!r} is not a Vision Transformer ({exc}); {advice}") from exc
    for attribute in ("blocks", "patch_embed", "num_prefix_tokens", "forward_features"):
        if not hasattr(model, attribute):
            raise ValueError(
                f"model={name!r} is not a plain Vision Transformer (it has no "
                f"{attribute!r}); {advice}"
            )


def get_model(name, *, pretrained, weights, device):
    """Build a model once per process and hand out the same instance after."""
    pretrained = bool(pretrained) and weights is None
    key = (name, pretrained, weights_identity(weights), str(device))
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = _build_model(name, pretrained, weights, device)
        return _MODELS[key]


def _build_model(name, pretrained, weights, device):
    import timm

    _check_is_vit(name)
    kwargs = _vit_kwargs()
    if weights is not None:
        model = timm.create_model(name, pretrained=False, **kwargs)
        load_weights(model, weights, name)
    elif pretrained:
        model = _create_pretrained(name, kwargs)
    else:
        # Random weights from a fixed seed, so every process (joblib workers,
        # a later session) builds the same model and features are reproducible.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = timm.create_model(name, pretrained=False, **kwargs)
    return model.eval().requires_grad_(False).to(device)


def _hub_offline():
    from huggingface_hub import constants

    # The hub client reads HF_HUB_OFFLINE once, at import; honour a later setting too.
    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return bool(constants.HF_HUB_OFFLINE) or flag in {"1", "true", "yes", "on"}


def _hub_cached_file(hub_id, filename):
    """The path of a weights file already in the local hub cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    repo_id, _, revision = hub_id.partition("@")
    names = [filename] if filename else ["model.safetensors", "pytorch_model.bin"]
    for candidate in names:
        path = try_to_load_from_cache(repo_id, candidate, revision=revision or None)
        if isinstance(path, str) and os.path.isfile(path):
            return path
    return None


def _unreachable(url, timeout=HUB_CHECK_TIMEOUT_S):
    """Why ``url`` cannot be reached within ``timeout`` seconds, or None if it can.

    Any HTTP answer counts as reachable, and so does a TLS failure (the hub
    client may have certificates this check lacks); only a connection that
    cannot be made, or makes no answer in time, counts as unreachable. The
    check runs in a daemon thread so that a hanging name lookup is bounded too.
    """
    outcome = {}

    def probe():
        import ssl

        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout)
        except urllib.error.HTTPError:
            pass
        except urllib.error.URLError as exc:
            if not isinstance(exc.reason, ssl.SSLError):
                outcome["reason"] = str(exc.reason)
        except OSError as exc:  # timeouts, resets
            outcome["reason"] = str(exc) or type(exc).__name__
        outcome["done"] = True

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if "done" not in outcome:
        return f"no answer within {timeout:g} s"
    return outcome.get("reason")


def _create_pretrained(name, kwargs):
    """Build ``name`` with its pretrained weights, failing within seconds offline."""
    import timm
    from huggingface_hub import constants
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None)
    url = getattr(cfg, "url", None)
    if not hub_id and not url:
        raise WeightsUnavailableError(name, "timm knows no pretrained weights for it")
    overlay = None
    if hub_id:
        cached = _hub_cached_file(hub_id, getattr(cfg, "hf_hub_filename", None))
        if cached is not None:
            # Loading the cached file directly needs no network round trip at all.
            overlay = dict(file=cached)
        elif _hub_offline():
            raise WeightsUnavailableError(
                name, "HF_HUB_OFFLINE is set and they are not in the local hub cache"
            )
        else:
            reason = _unreachable(constants.ENDPOINT)
            if reason is not None:
                raise WeightsUnavailableError(
                    name, f"the hub at {constants.ENDPOINT} cannot be reached ({reason})"
                )
    else:
        cached = Path(torch.hub.get_dir(), "checkpoints",
                      os.path.basename(urllib.parse.urlparse(url).path))
        if not cached.is_file():
            reason = _unreachable(url)
            if reason is not None:
                raise WeightsUnavailableError(name, f"{url} cannot be reached ({reason})")
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay,
                                 **kwargs)
    except Exception as exc:  # the hub client raises many unrelated types
        raise WeightsUnavailableError(name, f"{type(exc).__name__}: {exc}") from exc


def _read_state_dict(path):
    from timm.models import load_state_dict

    try:
        state = load_state_dict(str(path), weights_only=True)
    except Exception as exc:
        raise ValueError(
            f"weights file {str(path)!r} could not be read ({type(exc).__name__}: {exc}). "
            "It must be a .safetensors file or a torch state dict that loads with "
            "torch.load(weights_only=True)."
        ) from exc
    # The original DINO training checkpoints nest the backbone under teacher.
    if isinstance(state.get("teacher"), dict):
        state = state["teacher"]
    prefixes = ("module.", "backbone.")
    cleaned = {}
    for key, value in state.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
        cleaned[key] = value
    return cleaned


# A block's first norm appears once per block in every format we read (timm,
# DINO, DINOv2 with or without chunked blocks, DINOv3).
_BLOCK_KEY = re.compile(r"^blocks\.((?:\d+\.)*\d+)\.(?:norm1|ln1)\.weight$")
_REGISTER_KEYS = ("reg_token", "register_tokens", "storage_tokens")
ARCHITECTURE_FIELDS = ("patch size", "embedding width", "depth", "register tokens")


def architecture(state):
    """What a state dict says about its ViT, read before any format conversion.

    Returns
    -------
    dict
        ``ARCHITECTURE_FIELDS`` to values; ``None`` where the state dict does
        not say (a file in an unknown format).
    """
    patch = width = None
    registers = 0
    blocks = set()
    for key, value in state.items():
        shape = tuple(getattr(value, "shape", ()))
        if key.endswith(("patch_embed.proj.weight", "patch_embed.projection.weight")):
            if len(shape) == 4:
                width, patch = shape[0], shape[2:]
        elif key in _REGISTER_KEYS and len(shape) == 3:
            registers = shape[1]
        match = _BLOCK_KEY.match(key)
        if match:
            blocks.add(match.group(1))
    if patch is not None and patch[0] == patch[1]:
        patch = patch[0]
    return dict(zip(ARCHITECTURE_FIELDS, (patch, width, len(blocks) or None, registers)))


def _checkpoint_filter(model):
    # Each timm model module converts foreign formats (DINO, DINOv2, DINOv3) here.
    return getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)


def _fitted_state(state, model):
    """``state`` converted for ``model``, and why it does not fit (or None).

    Only called once the architectures agree, so timm's filter never resamples
    a patch embedding into a different network.
    """
    filter_fn = _checkpoint_filter(model)
    try:
        if filter_fn is not None:
            state = filter_fn(state, model)
    except Exception as exc:  # a foreign layout the filter does not know
        return None, f"timm could not convert it ({type(exc).__name__}: {exc})"
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    if missing:
        return None, f"{len(missing)} parameters are missing, e.g. {missing[:3]}"
    # Projection heads of training checkpoints are not part of the backbone.
    foreign = [key for key in state if key not in expected and not key.startswith("head")]
    if foreign:
        return None, f"it holds {len(foreign)} unknown parameters, e.g. {foreign[:3]}"
    wrong = [
        f"{key} {tuple(state[key].shape)} in the file, {tuple(value.shape)} in the model"
        for key, value in expected.items()
        if tuple(state[key].shape) != tuple(value.shape)
    ]
    if wrong:
        return None, f"{len(wrong)} parameters differ in size, e.g. {wrong[0]}"
    return {key: value for key, value in state.items() if key in expected}, None


@functools.lru_cache(maxsize=None)
def _meta_model(name):
    """``name`` built on the meta device: its structure, with no memory for weights."""
    import timm

    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, **_vit_kwargs())


def models_fitting(state):
    """The self-supervised timm ViTs (DINO, DINOv2, DINOv3) whose shapes ``state`` fits.

    One name per architecture. Models are built on the meta device, so this
    allocates no weights; it is only called to word an error.
    """
    import timm

    found = architecture(state)
    names = {}
    for name in timm.list_pretrained("vit_*dino*"):
        names.setdefault(name.split(".", 1)[0], name)
    fitting = []
    for name in names.values():
        patch = re.search(r"patch(\d+)", name)
        if found["patch size"] is not None and patch and int(patch[1]) != found["patch size"]:
            continue  # cheap: skip building models that cannot fit
        try:
            model = _meta_model(name)
        except Exception:
            continue
        if architecture(model.state_dict()) != found:
            continue
        if _fitted_state(dict(state), model)[1] is None:
            fitting.append(name)
    return fitting


def _weights_mismatch(path, name, problem, state):
    fitting = models_fitting(state)
    if len(fitting) == 1:
        hint = f" It fits the model {fitting[0]!r}."
    elif fitting:
        hint = f" It fits any of the models {', '.join(map(repr, fitting))}."
    else:
        hint = ""
    return ValueError(f"weights file {str(path)!r} does not fit model {name!r}: {problem}.{hint}")


def load_weights(model, weights, name):
    """Load a local weights file into ``model``, refusing any that does not fit.

    A patch size, embedding width, depth or register count that differs
    between the file and the model is an error naming both (and the models
    the file fits), never a silent resampling by timm's checkpoint filter.
    """
    path = Path(weights)
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ValueError(
            f"weights file {str(path)!r} has suffix {path.suffix!r}; expected one of "
            f"{WEIGHT_SUFFIXES}."
        )
    state = _read_state_dict(path)
    found, expected = architecture(state), architecture(model.state_dict())
    differences = [
        f"{field} {found[field]} in the file, {expected[field]} in the model"
        for field in ARCHITECTURE_FIELDS
        if found[field] is not None and found[field] != expected[field]
    ]
    if differences:
        raise _weights_mismatch(path, name, "; ".join(differences), state)
    fitted, problem = _fitted_state(dict(state), model)
    if problem is not None:
        raise _weights_mismatch(path, name, problem, state)
    model.load_state_dict(fitted)


def attention_kind(attn):
    """Name of the supported attention implementation, or None."""
    from timm.layers.attention import Attention

    if isinstance(attn, Attention):
        return "timm"
    if type(attn).__name__ == "EvaAttention":
        return "eva"
    return None


def _project_qkv(attn, x, rope):
    """The queries, keys and values that ``attn`` really attends with.

    Mirrors the attention's own forward (qk-norm, separate biases, rotary
    embeddings), each ``(B, heads, N, head_dim)``.
    """
    batch, n_tokens, _ = x.shape
    if attn.qkv is None:
        q, k, v = (
            proj(x).reshape(batch, n_tokens, attn.num_heads, -1).transpose(1, 2)
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj)
        )
    else:
        bias = getattr(attn, "q_bias", None)
        if bias is None:
            qkv = attn.qkv(x)
        else:
            qkv = F.linear(x, attn.qkv.weight, attn.qkv.bias)
            qkv = qkv + torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
        qkv = qkv.reshape(batch, n_tokens, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if rope is not None:
        from timm.layers import apply_rot_embed_cat

        npt = attn.num_prefix_tokens
        half = getattr(attn, "rotate_half", False)
        q = torch.cat([q[:, :, :npt], apply_rot_embed_cat(q[:, :, npt:], rope, half=half)], 2)
        k = torch.cat([k[:, :, :npt], apply_rot_embed_cat(k[:, :, npt:], rope, half=half)], 2)
    return q.type_as(v), k.type_as(v), v


def check_facet_support(model, name, facet, layer, attention):
    """Refuse, before any forward pass, what this model cannot give exactly."""
    n_blocks = len(model.blocks)
    if not -n_blocks <= layer < n_blocks:
        raise ValueError(f"layer={layer} is out of range for {name!r} with {n_blocks} blocks.")
    needs = []
    if facet != "token":
        needs.append(model.blocks[layer])
    if attention:
        needs.append(model.blocks[-1])
    for block in needs:
        attn = getattr(block, "attn", None)
        if attn is None or attention_kind(attn) is None:
            raise ValueError(
                f"{name!r} uses an attention module ({type(attn).__name__}) whose "
                "queries and keys skseg cannot read exactly; use facet='token' and "
                "attention=False."
            )


@contextmanager
def _hooks(model, facet, layer, attention, store):
    """Register the hooks that fill ``store``; always remove them."""
    handles = []
    facet_block = model.blocks[layer]
    last_block = model.blocks[-1]
    try:
        if facet == "token":
            handles.append(facet_block.register_forward_hook(
                lambda module, args, output: store.__setitem__("facet", output)
            ))
        wants = {}
        if facet != "token":
            wants.setdefault(facet_block.attn, set()).add(facet)
        if attention:
            wants.setdefault(last_block.attn, set()).add("cls_attention")
        for attn, what in wants.items():
            handles.append(attn.register_forward_pre_hook(
                _qkv_hook(what, store), with_kwargs=True
            ))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _qkv_hook(what, store):
    def hook(attn, args, kwargs):
        x = args[0] if args else kwargs["x"]
        q, k, v = _project_qkv(attn, x, kwargs.get("rope"))
        chosen = {"query": q, "key": k, "value": v}
        for facet in what & set(chosen):
            # heads concatenated: (B, heads, N, hd) -> (B, N, heads * hd)
            tensor = chosen[facet]
            store["facet"] = tensor.transpose(1, 2).reshape(tensor.shape[0], tensor.shape[2], -1)
        if "cls_attention" in what:
            # Only the CLS query row: O(N) per head, never the N x N matrix.
            logits = (q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)
            store["cls_attention"] = logits.softmax(-1)[:, :, 0].mean(1)
    return hook


def _forward_lock(model):
    with _FORWARD_LOCKS_LOCK:
        return _FORWARD_LOCKS.setdefault(model, threading.Lock())


def forward_facets(model, batch, *, facet, layer, attention):
    """Run one batch and return patch features, CLS tokens and CLS attention.

    Safe to call from several threads on one model: hooks live on the shared
    model, so hook installation, the forward pass and hook removal run under
    a per-model lock. One forward already keeps every CPU core (or the GPU's
    one default stream) busy, so concurrent forwards would only compete for
    the same hardware and memory; image decoding still runs in parallel.

    Parameters
    ----------
    model : timm VisionTransformer or Eva
    batch : Tensor of shape (B, 3, H, W)
        Normalised images, sides multiples of the patch size.

    Returns
    -------
    patches : Tensor of shape (B, h, w, d)
    cls : Tensor of shape (B, D)
    cls_attention : Tensor of shape (B, h, w) or None
    """
    patch_h, patch_w = model.patch_embed.patch_size
    grid = (batch.shape[2] // patch_h, batch.shape[3] // patch_w)
    n_prefix = model.num_prefix_tokens
    store = {}
    with _forward_lock(model), torch.inference_mode(), \
            _hooks(model, facet, layer, attention, store):
        tokens = model.forward_features(batch)
    cls = tokens[:, 0]
    patches = store["facet"][:, n_prefix:].reshape(batch.shape[0], *grid, -1)
    cls_attention = None
    if attention:
        cls_attention = store["cls_attention"][:, n_prefix:].reshape(batch.shape[0], *grid)
    return patches, cls, cls_attention
