"""Building timm Vision Transformers, loading their weights, and reading their
attention facets through forward hooks."""

import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

FACETS = ("key", "query", "value", "token")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")

_MODELS = {}
_MODELS_LOCK = threading.Lock()


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could neither be downloaded nor found locally."""


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

    # dynamic_img_size lets one model take any multiple of its patch size.
    kwargs = dict(num_classes=0, dynamic_img_size=True)
    if weights is not None:
        model = timm.create_model(name, pretrained=False, **kwargs)
        load_weights(model, weights, name)
    elif pretrained:
        try:
            model = timm.create_model(name, pretrained=True, **kwargs)
        except Exception as exc:  # the hub client raises many unrelated types
            raise WeightsUnavailableError(
                f"Pretrained weights for {name!r} could not be loaded ({type(exc).__name__}: "
                f"{exc}). Without network access, either download the weights elsewhere "
                "and pass weights='/path/to/file.safetensors' (timm or original "
                "DINO/DINOv2 format), copy a filled Hugging Face hub cache to this "
                "machine (HF_HOME) and set HF_HUB_OFFLINE=1, or pass pretrained=False "
                "for random weights."
            ) from exc
    else:
        # Random weights from a fixed seed, so every process (joblib workers,
        # a later session) builds the same model and features are reproducible.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = timm.create_model(name, pretrained=False, **kwargs)
    for attribute in ("blocks", "patch_embed", "num_prefix_tokens", "forward_features"):
        if not hasattr(model, attribute):
            raise ValueError(
                f"model={name!r} is not a plain Vision Transformer (it has no "
                f"{attribute!r}); skseg needs a ViT with a patch grid."
            )
    return model.eval().requires_grad_(False).to(device)


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


def load_weights(model, weights, name):
    """Load a local weights file into ``model`` through timm's checkpoint filter."""
    path = Path(weights)
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ValueError(
            f"weights file {str(path)!r} has suffix {path.suffix!r}; expected one of "
            f"{WEIGHT_SUFFIXES}."
        )
    state = _read_state_dict(path)
    # Each timm model module converts foreign formats (DINO, DINOv2, DINOv3) here.
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise ValueError(
            f"weights file {str(path)!r} does not fit model {name!r}: "
            f"{len(missing)} parameters are missing, e.g. {missing[:3]}."
        )
    # Projection heads of training checkpoints are not part of the backbone.
    foreign = [key for key in unexpected if not key.startswith("head")]
    if foreign:
        raise ValueError(
            f"weights file {str(path)!r} does not fit model {name!r}: it holds "
            f"{len(foreign)} unknown parameters, e.g. {foreign[:3]}."
        )


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


def forward_facets(model, batch, *, facet, layer, attention):
    """Run one batch and return patch features, CLS tokens and CLS attention.

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
    with torch.inference_mode(), _hooks(model, facet, layer, attention, store):
        tokens = model.forward_features(batch)
    cls = tokens[:, 0]
    patches = store["facet"][:, n_prefix:].reshape(batch.shape[0], *grid, -1)
    cls_attention = None
    if attention:
        cls_attention = store["cls_attention"][:, n_prefix:].reshape(batch.shape[0], *grid)
    return patches, cls, cls_attention
