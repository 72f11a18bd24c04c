"""Running a timm Vision Transformer on a device and reading its attention
facets (keys, queries, values, tokens) through forward hooks."""

import threading
import weakref
from contextlib import contextmanager

import torch
import torch.nn.functional as F


# One lock per model instance: a forward pass with its hooks is one critical section.
_FORWARD_LOCKS = weakref.WeakKeyDictionary()
_FORWARD_LOCKS_LOCK = threading.Lock()


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
