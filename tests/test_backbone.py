"""DINOv2 backbone: reference tokens, official layout and parameter counts, interpolation, weight loading."""

from __future__ import annotations

import math
from dataclasses import replace
from urllib.error import URLError

import numpy as np
import pytest
import torch
from conftest import weights_file

from percs.model import (
    VARIANTS,
    DinoVisionTransformer,
    build_backbone,
    checkpoint_url,
    interpolate_pos_embed,
    load_backbone,
)
from percs.model.backbone import patch_grid

VITS14_FILE = "dinov2_vits14_pretrain.pth"

# Parameter counts of the official models as the hub builds them (img_size 518, so pos_embed is 1 + 37 * 37
# rows; mask_token included). With width D and depth L, a block with the MLP feed-forward holds
# 12 D^2 + 15 D parameters (qkv 3D^2 + 3D, proj D^2 + D, fc1 4D^2 + 4D, fc2 4D^2 + D, two LayerNorms 4D, two
# LayerScales 2D) and everything outside the blocks 1963 D (patch conv 588 D + D, cls D, pos_embed 1370 D,
# mask_token D, final norm 2 D). ViT-S: 12 (12 * 384^2 + 15 * 384) + 1963 * 384 = 22,056,576, the count of
# the shared file. ViT-g's SwiGLU hidden width is (int(4 D * 2 / 3) + 7) // 8 * 8 = 4096, so its block holds
# w12 (D * 8192 + 8192) + w3 (4096 D + D) + attention (4 D^2 + 4 D) + norms and scales (6 D).
# Registers add 4 D.
OFFICIAL_PARAMETERS = {
    "vits14": 22_056_576,
    "vitb14": 86_580_480,
    "vitl14": 304_368_640,
    "vitg14": 1_136_480_768,
    "vits14_reg": 22_056_576 + 4 * 384,
    "vitb14_reg": 86_580_480 + 4 * 768,
    "vitl14_reg": 304_368_640 + 4 * 1024,
    "vitg14_reg": 1_136_480_768 + 4 * 1536,
}


def official_shapes(width: int, depth: int, swiglu: bool, registers: int) -> dict[str, tuple[int, ...]]:
    """Every key of an official DINOv2 /14 state dict (block_chunks=0) with its shape, written out by hand."""
    shapes = {
        "cls_token": (1, 1, width),
        "pos_embed": (1, 1370, width),
        "mask_token": (1, width),
        "patch_embed.proj.weight": (width, 3, 14, 14),
        "patch_embed.proj.bias": (width,),
        "norm.weight": (width,),
        "norm.bias": (width,),
    }
    if registers:
        shapes["register_tokens"] = (1, registers, width)
    if swiglu:
        ffn = {"mlp.w12.weight": (2 * 4096, width), "mlp.w12.bias": (2 * 4096,)}
        ffn |= {"mlp.w3.weight": (width, 4096), "mlp.w3.bias": (width,)}
    else:
        ffn = {"mlp.fc1.weight": (4 * width, width), "mlp.fc1.bias": (4 * width,)}
        ffn |= {"mlp.fc2.weight": (width, 4 * width), "mlp.fc2.bias": (width,)}
    block = {
        "norm1.weight": (width,),
        "norm1.bias": (width,),
        "attn.qkv.weight": (3 * width, width),
        "attn.qkv.bias": (3 * width,),
        "attn.proj.weight": (width, width),
        "attn.proj.bias": (width,),
        "ls1.gamma": (width,),
        "norm2.weight": (width,),
        "norm2.bias": (width,),
        "ls2.gamma": (width,),
        **ffn,
    }
    for index in range(depth):
        shapes |= {f"blocks.{index}.{key}": shape for key, shape in block.items()}
    return shapes


OFFICIAL_LAYOUT = {
    "vits14": (384, 12, False),
    "vitb14": (768, 12, False),
    "vitl14": (1024, 24, False),
    "vitg14": (1536, 40, True),
}


@pytest.fixture(scope="module")
def vits14_state_dict() -> dict[str, torch.Tensor]:
    return torch.load(weights_file(VITS14_FILE), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def vits14() -> DinoVisionTransformer:
    return load_backbone("vits14", weights=weights_file(VITS14_FILE)).eval()


def test_reproduces_reference_tokens(vits14):
    fixture = np.load(weights_file("dinov2_vits14_reference_tokens.npz"))
    with torch.no_grad():
        output = vits14(torch.from_numpy(fixture["input"]))
    assert output.features.shape == (1, 384, 37, 37)
    tokens = torch.cat((output.class_token[:, None], output.features.flatten(2).transpose(1, 2)), dim=1)
    difference = (tokens - torch.from_numpy(fixture["tokens"])).abs().max().item()
    assert difference <= 1e-4


@pytest.mark.parametrize("name", ["vits14", "vitb14"])
def test_forward_backward_at_full_depth(name):
    torch.manual_seed(0)
    model = build_backbone(name)
    width = model.spec.embed_dim
    output = model(torch.randn(2, 3, 28, 42))
    assert output.features.shape == (2, width, 2, 3)
    assert output.class_token.shape == (2, width)
    assert output.register_tokens.shape == (2, 0, width)
    (output.features.square().mean() + output.class_token.mean()).backward()
    for key, parameter in model.named_parameters():
        if key == "mask_token":  # unused outside DINOv2's masked pretraining, hence frozen
            assert not parameter.requires_grad and parameter.grad is None
        else:
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), key
    assert model.blocks[0].mlp.fc1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(VARIANTS))
def test_meta_build_matches_official_layout(name):
    model = build_backbone(name, device="meta")
    assert sum(parameter.numel() for parameter in model.parameters()) == OFFICIAL_PARAMETERS[name]
    width, depth, swiglu = OFFICIAL_LAYOUT[name.removesuffix("_reg")]
    registers = 4 if name.endswith("_reg") else 0
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert shapes == official_shapes(width, depth, swiglu, registers)


def test_meta_build_initialises_after_to_empty():
    model = build_backbone("vits14", device="meta").to_empty(device="cpu")
    model.reset_parameters()
    assert torch.equal(model.blocks[0].ls1.gamma, torch.ones(384))
    assert torch.equal(model.norm.weight, torch.ones(384)) and torch.equal(model.mask_token, torch.zeros(1, 384))
    assert 0.015 < model.blocks[0].attn.qkv.weight.std() < 0.025
    assert torch.isfinite(model(torch.randn(1, 3, 14, 14)).features).all()


def test_vits14_layout_matches_the_shared_file(vits14_state_dict):
    model = build_backbone("vits14", device="meta")
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert {key: tuple(value.shape) for key, value in vits14_state_dict.items()} == expected


@pytest.mark.parametrize("name", ["vitl14", "vitg14_reg"])
def test_large_variants_run_at_reduced_depth(name):
    torch.manual_seed(0)
    model = DinoVisionTransformer(replace(VARIANTS[name], depth=2))
    width, registers = model.spec.embed_dim, model.spec.num_register_tokens
    output = model(torch.randn(1, 3, 28, 56))
    assert output.features.shape == (1, width, 2, 4)
    assert output.register_tokens.shape == (1, registers, width)
    output.features.mean().backward()
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    assert all(torch.isfinite(parameter.grad).all() for parameter in trainable)


def test_pos_embed_is_unchanged_on_the_training_grid():
    pos_embed = torch.randn(1, 1370, 8)
    assert interpolate_pos_embed(pos_embed, (37, 37)) is pos_embed
    assert interpolate_pos_embed(pos_embed, (37, 37), offset=0.0, antialias=True) is pos_embed


def cubic_weight(distance: float) -> float:
    """PyTorch's bicubic kernel (Keys, A = -0.75)."""
    a, x = -0.75, abs(distance)
    if x <= 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a if x < 2 else 0.0


def bicubic_matrix(size_in: int, size_out: int, scale: float) -> np.ndarray:
    """(size_out, size_in) resampling matrix: output i reads input (i + 0.5) / scale - 0.5, edges clamped."""
    matrix = np.zeros((size_out, size_in))
    for row in range(size_out):
        source = (row + 0.5) / scale - 0.5
        base = math.floor(source)
        for tap in range(-1, 3):
            matrix[row, min(max(base + tap, 0), size_in - 1)] += cubic_weight(source - (base + tap))
    return matrix


@pytest.mark.parametrize("offset", [0.1, 0.0])
@pytest.mark.parametrize("grid", [(1, 1), (2, 3), (16, 16), (38, 37), (53, 20)])
def test_pos_embed_interpolation_matches_a_direct_bicubic(grid, offset):
    torch.manual_seed(1)
    pos_embed = torch.randn(1, 1 + 37 * 37, 4)
    resized = interpolate_pos_embed(pos_embed, grid, offset=offset)
    height, width = grid
    assert resized.shape == (1, 1 + height * width, 4)
    assert torch.equal(resized[:, 0], pos_embed[:, 0])
    # The official models resize by scale factor (size + offset) / 37, which shifts the sampling positions.
    rows = bicubic_matrix(37, height, (height + offset) / 37)
    columns = bicubic_matrix(37, width, (width + offset) / 37)
    table = pos_embed[0, 1:].double().numpy().reshape(37, 37, 4)
    expected = np.einsum("yi,xj,ijc->yxc", rows, columns, table).reshape(-1, 4)
    # float32 against float64; a wrong offset or scale convention errs by > 1e-3 (see the next test).
    np.testing.assert_allclose(resized[0, 1:].numpy(), expected, atol=5e-5)


def test_pos_embed_offset_changes_the_values():
    pos_embed = torch.randn(1, 1370, 4)
    shifted, exact = (interpolate_pos_embed(pos_embed, (16, 16), offset=offset) for offset in (0.1, 0.0))
    assert (shifted - exact).abs().max() > 1e-3


@pytest.mark.parametrize("grid", [(5, 9), (40, 74)])
def test_pos_embed_antialiased_shapes(grid):
    resized = interpolate_pos_embed(torch.randn(1, 1370, 4), grid, offset=0.0, antialias=True)
    assert resized.shape == (1, 1 + grid[0] * grid[1], 4)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1, 3, 30, 28), "images has height 30, expected a positive multiple of the patch size 14"),
        ((1, 3, 28, 20), "images has width 20"),
        ((1, 3, 0, 28), "images has height 0"),
        ((3, 28, 28), r"images has shape \(3, 28, 28\), expected \(B, 3, H, W\)"),
        ((1, 1, 28, 28), "expected \\(B, 3, H, W\\)"),
    ],
)
def test_image_size_errors(shape, message):
    with pytest.raises(ValueError, match=message):
        patch_grid(torch.zeros(shape))


def test_forward_rejects_a_non_multiple_of_14(vits14):
    with pytest.raises(ValueError, match="images has width 50"):
        vits14(torch.zeros(1, 3, 56, 50))


def test_unknown_variant_is_named():
    with pytest.raises(ValueError, match="name 'vitx14' is not a DINOv2 variant; expected one of vits14"):
        load_backbone("vitx14", weights="unused.pth")


def test_missing_and_unexpected_keys_are_named(vits14_state_dict, tmp_path):
    state_dict = dict(vits14_state_dict)
    del state_dict["blocks.3.ls1.gamma"]
    state_dict["head.weight"] = torch.zeros(3)
    path = tmp_path / "edited.pth"
    torch.save(state_dict, path)
    with pytest.raises(ValueError) as error:
        load_backbone("vits14", weights=path)
    assert str(path) in str(error.value)
    assert "missing keys: blocks.3.ls1.gamma" in str(error.value)
    assert "unexpected keys: head.weight" in str(error.value)


def test_wrong_variant_names_shapes(tmp_path):
    path = weights_file(VITS14_FILE)
    with pytest.raises(ValueError) as error:
        load_backbone("vitb14", weights=path)
    assert str(path) in str(error.value)
    assert "wrong shapes: cls_token (1, 1, 384) (model: (1, 1, 768))" in str(error.value)
    with pytest.raises(ValueError, match="missing keys: register_tokens"):
        load_backbone("vits14_reg", weights=path)


def test_wrapped_state_dict_loads_when_unambiguous(vits14_state_dict, tmp_path):
    wrapped, ambiguous = tmp_path / "wrapped.pth", tmp_path / "ambiguous.pth"
    torch.save({"model": vits14_state_dict, "epoch": 3}, wrapped)
    model = load_backbone("vits14", weights=wrapped)
    assert torch.equal(model.pos_embed, vits14_state_dict["pos_embed"])
    torch.save({"teacher": vits14_state_dict, "student": vits14_state_dict}, ambiguous)
    with pytest.raises(ValueError, match=f"weights file {ambiguous} is ambiguous: 'teacher' and 'student'"):
        load_backbone("vits14", weights=ambiguous)


def test_unreadable_and_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"weights file {tmp_path / 'absent.pth'} does not exist"):
        load_backbone("vits14", weights=tmp_path / "absent.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=f"weights file {garbage} could not be read"):
        load_backbone("vits14", weights=garbage)


def test_register_variant_loads_a_synthetic_state_dict(tmp_path):
    torch.manual_seed(2)
    source = build_backbone("vits14_reg")
    path = tmp_path / "vits14_reg.pth"
    torch.save(source.state_dict(), path)
    model = load_backbone("vits14_reg", weights=path)
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    with torch.no_grad():
        output = model(torch.randn(1, 3, 28, 42))
        assert output.register_tokens.shape == (1, 4, 384)
        model.register_tokens.add_(1.0)  # the registers take part in attention
        assert not torch.allclose(model(torch.randn(1, 3, 28, 42)).features, output.features)


def test_checkpoint_urls():
    root = "https://dl.fbaipublicfiles.com/dinov2"
    assert checkpoint_url("vits14") == f"{root}/dinov2_vits14/dinov2_vits14_pretrain.pth"
    assert checkpoint_url("vitg14") == f"{root}/dinov2_vitg14/dinov2_vitg14_pretrain.pth"
    assert checkpoint_url("vitl14_reg") == f"{root}/dinov2_vitl14/dinov2_vitl14_reg4_pretrain.pth"


def test_download_goes_through_torch_hub(vits14_state_dict, monkeypatch):
    calls = []

    def fake_download(url, **kwargs):
        calls.append((url, kwargs))
        return dict(vits14_state_dict)

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    model = load_backbone("vits14")
    assert calls == [(checkpoint_url("vits14"), {"map_location": "cpu", "weights_only": True})]
    assert torch.equal(model.blocks[5].attn.qkv.weight, vits14_state_dict["blocks.5.attn.qkv.weight"])


def test_download_reads_torch_hub_cache(vits14_state_dict, monkeypatch, tmp_path):
    cached = tmp_path / "hub" / "checkpoints" / "dinov2_vits14_pretrain.pth"
    cached.parent.mkdir(parents=True)
    cached.symlink_to(weights_file(VITS14_FILE))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise AssertionError("the cached file should have been used")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    model = load_backbone("vits14")
    assert torch.equal(model.norm.weight, vits14_state_dict["norm.weight"])


def test_offline_error_says_how_to_pass_a_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RuntimeError) as error:
        load_backbone("vitl14")
    message = str(error.value)
    assert checkpoint_url("vitl14") in message and "no network" in message
    assert "weights='path/to/dinov2_vitl14_pretrain.pth'" in message and "--weights PATH" in message
