"""Models: Table 2 shapes, unpooling switches, bilinear upsampling, FCN alignment,
ImageNet transplant (on a random torchvision VGG: no download), checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from models import (
    ARCHITECTURES,
    FCN,
    VGG16,
    CheckpointError,
    CheckpointMeta,
    DeconvNet,
    WeightsUnavailableError,
    build_model,
    fold_batchnorm,
    load_checkpoint,
    load_vgg_state_dict,
    mirror,
    read_checkpoint_meta,
    save_checkpoint,
    transplant_vgg,
)
from models.fcn import bilinear_kernel, upsampler
from models.summary import forward_flops, param_count

TINY = 1 / 16

# Paper Table 2, (layer, H, C) in forward order; H == W.
TABLE2 = [
    ("conv1-1", 224, 64), ("conv1-2", 224, 64), ("pool1", 112, 64),
    ("conv2-1", 112, 128), ("conv2-2", 112, 128), ("pool2", 56, 128),
    ("conv3-1", 56, 256), ("conv3-2", 56, 256), ("conv3-3", 56, 256), ("pool3", 28, 256),
    ("conv4-1", 28, 512), ("conv4-2", 28, 512), ("conv4-3", 28, 512), ("pool4", 14, 512),
    ("conv5-1", 14, 512), ("conv5-2", 14, 512), ("conv5-3", 14, 512), ("pool5", 7, 512),
    ("fc6", 1, 4096), ("fc7", 1, 4096), ("deconv-fc6", 7, 512),
    ("unpool5", 14, 512), ("deconv5-1", 14, 512), ("deconv5-2", 14, 512), ("deconv5-3", 14, 512),
    ("unpool4", 28, 512), ("deconv4-1", 28, 512), ("deconv4-2", 28, 512), ("deconv4-3", 28, 256),
    ("unpool3", 56, 256), ("deconv3-1", 56, 256), ("deconv3-2", 56, 256), ("deconv3-3", 56, 128),
    ("unpool2", 112, 128), ("deconv2-1", 112, 128), ("deconv2-2", 112, 64),
    ("unpool1", 224, 64), ("deconv1-1", 224, 64), ("deconv1-2", 224, 64),
    ("output", 224, 21),
]


def _trace_shapes(model: DeconvNet, x: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """Output shape of every Table-2 layer: the ReLU closing each conv/deconv unit,
    each pool/unpool, and the score layer."""
    shapes: list[tuple[str, tuple[int, ...]]] = []

    def hook(kind):
        def record(_m, _inp, out):
            out = out[0] if isinstance(out, tuple) else out
            shapes.append((kind, tuple(out.shape)))

        return record

    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.register_forward_hook(hook("relu"))
        elif isinstance(m, (nn.MaxPool2d, nn.MaxUnpool2d)):
            m.register_forward_hook(hook("pool"))
    model.score.register_forward_hook(hook("score"))
    model(x)
    return shapes


def test_deconvnet_layer_shapes_match_table2():
    with torch.device("meta"):
        model = DeconvNet().eval()  # eval: BN over a 1x1 fc map needs batch > 1 in training
        shapes = _trace_shapes(model, torch.empty(1, 3, 224, 224))
    assert len(shapes) == len(TABLE2)
    for (kind, shape), (name, h, c) in zip(shapes, TABLE2):
        assert shape == (1, c, h, h), f"{name}: got {shape}, Table 2 says {h}x{h}x{c}"
        assert (kind == "pool") == ("pool" in name), name


def test_every_deconvnet_conv_is_followed_by_bn_and_relu():
    model = DeconvNet(width=TINY)
    mods = [m for m in model.modules() if not isinstance(m, (nn.Sequential, DeconvNet))]
    convs = [i for i, m in enumerate(mods) if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(convs) == 13 + 2 + 1 + 13 + 1  # encoder, fc6/fc7, deconv-fc6, decoder, score
    for i in convs[:-1]:
        assert isinstance(mods[i + 1], nn.BatchNorm2d) and isinstance(mods[i + 2], nn.ReLU)
    assert mods[convs[-1]] is model.score and mods[-1] is model.score  # nothing after the score
    assert model.fc6[0].kernel_size == (7, 7) and model.deconv_fc6[0].kernel_size == (7, 7)
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())


def test_decoder_table_is_mirrored_from_vgg16():
    assert mirror(VGG16) == ["U", 512, 512, 512, "U", 512, 512, 256, "U", 256, 256, 128, "U", 128, 64, "U", 64, 64]


def test_tiny_deconvnet_forward_backward_on_cpu():
    torch.manual_seed(0)
    model = DeconvNet(num_classes=5, width=TINY)
    x = torch.randn(2, 3, 224, 224, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 5, 224, 224)
    assert torch.isfinite(out).all()
    F.cross_entropy(out, torch.randint(0, 5, (2, 224, 224))).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


def test_folding_batchnorm_keeps_the_outputs_and_leaves_no_bn():
    torch.manual_seed(0)
    model = DeconvNet(num_classes=5, width=TINY).double()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):  # non-trivial statistics to fold
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.2, 3)
        bn.weight.data.uniform_(0.5, 2)
        bn.bias.data.uniform_(-1, 1)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(model)
    model.eval()
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        before = model(x)
        assert fold_batchnorm(model) == 13 + 3 + 13  # encoder convs, fc6/fc7/deconv-fc6, decoder deconvs
        after = model(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(after, before, rtol=1e-9, atol=1e-9 * before.abs().max().item())


def test_unpooling_puts_values_at_the_argmax_and_zeros_elsewhere():
    x = torch.tensor(
        [[[[1.0, 5.0, 2.0, 0.0], [3.0, 4.0, 9.0, 1.0], [7.0, 0.0, 1.0, 2.0], [6.0, 8.0, 3.0, 4.0]]]]
    )
    pool, unpool = nn.MaxPool2d(2, 2, return_indices=True), nn.MaxUnpool2d(2, 2)
    y, idx = pool(x)
    assert y.tolist() == [[[[5.0, 9.0], [8.0, 4.0]]]]
    back = unpool(y * 10, idx, output_size=x.shape[-2:])
    expected = torch.zeros(4, 4)
    expected[0, 1], expected[1, 2], expected[3, 1], expected[3, 3] = 50, 90, 80, 40
    assert torch.equal(back[0, 0], expected)


def test_deconvnet_unpools_with_its_own_switches():
    # Two different inputs must give different switch patterns, and unpool5's
    # non-zeros must sit exactly where pool5 took its maxima.
    torch.manual_seed(1)
    model = DeconvNet(num_classes=3, width=TINY).eval()
    seen = {}
    model.decoder[0].register_forward_hook(lambda m, i, o: seen.__setitem__("unpool5", o))
    x = torch.randn(1, 3, 224, 224)
    fc7, switches = model.encode(x)
    model.decode(fc7, switches)
    idx, size = switches[-1]
    nonzero = seen["unpool5"].flatten(2) != 0
    allowed = torch.zeros_like(nonzero)
    allowed.scatter_(2, idx.flatten(2), True)
    assert size == (14, 14)
    assert not (nonzero & ~allowed).any()


@pytest.mark.parametrize("stride", [2, 8, 32])
def test_bilinear_upsampling_reproduces_interpolation_in_the_interior(stride):
    up = upsampler(1, stride, learnable=False)
    h = w = 6
    ramp = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w) * 0.5 + torch.arange(w) * 3.0
    for x in (torch.full((1, 1, h, w), 2.5), ramp):
        out = up(x)
        # A transposed conv of kernel 2s, stride s is bilinear interpolation shifted by s/2.
        out = out[..., stride // 2 : stride // 2 + h * stride, stride // 2 : stride // 2 + w * stride]
        ref = F.interpolate(x, scale_factor=stride, mode="bilinear", align_corners=False)
        m = stride  # border: where interpolation clamps instead of extrapolating
        torch.testing.assert_close(out[..., m:-m, m:-m], ref[..., m:-m, m:-m], atol=1e-5, rtol=0)


def test_bilinear_kernel_is_per_channel():
    k = bilinear_kernel(3, 4)
    assert k[0, 1].abs().sum() == 0 and k[2, 2].sum() > 0
    assert torch.allclose(k[1, 1], k[0, 0])


@pytest.mark.parametrize("stride", [32, 16, 8])
@pytest.mark.parametrize("size", [(1, 1), (7, 5), (33, 65), (224, 224), (375, 500), (97, 31)])
def test_fcn_output_matches_input_size(stride, size):
    torch.manual_seed(0)
    model = FCN(num_classes=4, stride=stride, width=TINY)
    x = torch.randn(1, 3, *size, requires_grad=True)
    out = model(x)
    assert out.shape == (1, 4, *size)
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    assert x.grad.abs().sum() > 0


def _coord_map(layers) -> tuple[float, float]:
    """(a, b) with input coordinate = a * output coordinate + b through ``layers``,
    Caffe's coord_map arithmetic (pixel centres, receptive-field centre)."""
    a, b = 1.0, 0.0
    for m in layers:
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.ConvTranspose2d)):
            k, s, p = (v if isinstance(v, int) else v[0] for v in (m.kernel_size, m.stride, m.padding))
            la, lb = (1 / s, -((k - 1) / 2 - p) / s) if isinstance(m, nn.ConvTranspose2d) else (s, (k - 1) / 2 - p)
            a, b = a * la, a * lb + b
    return a, b


@pytest.mark.parametrize("stride", [32, 16, 8])
def test_fcn_crop_offsets_align_output_to_input_pixels(stride):
    # Derive every crop offset from the layers' geometry (independently of the
    # constants in models/fcn.py) and check the network uses exactly those.
    from models import fcn as fcn_mod

    model = FCN(num_classes=3, stride=stride, width=TINY)
    feats = list(model.features)
    at = {name: _coord_map(feats[: i + 1]) for name, i in (("pool3", model._pool3), ("pool4", model._pool4))}
    h = _coord_map(feats + [model.fc6[0], model.fc7[0], model.score_fr])

    def then(m, cur):
        sub = _coord_map([m])
        return cur[0] * sub[0], cur[0] * sub[1] + cur[1]

    def offset(coarse, fine):  # coarse pixel y sits on fine pixel y + c
        assert coarse[0] == fine[0]
        c = (coarse[1] - fine[1]) / fine[0]
        assert c == int(c) and c >= 0
        return int(c)

    if stride <= 16:
        h = then(model.upscore2, h)
        assert offset(h, at["pool4"]) == fcn_mod._POOL4_OFFSET
    if stride == 8:
        h = then(model.upscore_pool4, h)
        assert offset(h, at["pool3"]) == fcn_mod._POOL3_OFFSET
    h = then(model.upscore_final, h)
    assert h[0] == 1 and -h[1] == fcn_mod._FINAL[stride][1]  # output pixel y + c is input pixel y


def test_fcn_chain_init_computes_what_the_coarser_net_did():
    torch.manual_seed(0)
    f32 = FCN(num_classes=3, stride=32, width=TINY).eval()
    nn.init.normal_(f32.score_fr.weight, std=0.5)
    f16 = build_model("fcn16s", num_classes=3, width=TINY, init_from=f32).eval()
    f8 = build_model("fcn8s", num_classes=3, width=TINY, init_from=f16).eval()
    assert torch.equal(f8.features[0].weight, f32.features[0].weight)
    assert torch.equal(f16.score_fr.weight, f32.score_fr.weight)
    x = torch.randn(1, 3, 96, 128)
    # Skip scores start at zero, so each finer net first reproduces its coarser parent
    # up to the different bilinear upsampling of the same coarse map.
    assert torch.count_nonzero(f16.score_pool4.weight) == torch.count_nonzero(f8.score_pool3.weight) == 0
    with torch.no_grad():
        ref = f32(x)
        assert ref.shape == (1, 3, 96, 128) and ref.std() > 0 and len(ref.argmax(1).unique()) > 1
        for net in (f16, f8):
            out = net(x)
            assert out.shape == ref.shape
            assert torch.corrcoef(torch.stack([out.flatten(), ref.flatten()]))[0, 1] > 0.95
            assert (out.argmax(1) == ref.argmax(1)).float().mean() > 0.9
    with pytest.raises(ValueError):
        f32.init_from_coarser(f8)


def test_transplant_matches_torchvision_classifier_deconvnet():
    # Random (not downloaded) vgg16_bn: the converted fc7 equals torchvision's
    # classifier output at the same 224x224 input.
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16_bn(weights=None).eval()
    model = DeconvNet().eval()
    transplant_vgg(model, vgg.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref = vgg.classifier[:5](torch.flatten(vgg.avgpool(vgg.features(x)), 1))  # fc6, relu, drop, fc7, relu
        fc7, _ = model.encode(x)
    # DeconvNet's fresh BN after fc6/fc7 is x / sqrt(1 + eps) in eval mode.
    torch.testing.assert_close(fc7.flatten(1), ref, rtol=1e-4, atol=1e-4)


def test_transplant_matches_torchvision_classifier_fcn():
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16(weights=None).eval()
    model = FCN(stride=8).eval()
    transplant_vgg(model, vgg.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        pool5 = vgg.features(x)
        ref = vgg.classifier[:5](torch.flatten(pool5, 1))
        # FCN's own features pad by 100 and round up; the conv weights are the same
        # tensors, and fc6/fc7 as convs on the 7x7 pool5 equal the Linear layers.
        out = model.fc7(model.fc6(pool5))
    assert torch.equal(model.features[0].weight, vgg.features[0].weight)
    torch.testing.assert_close(out.flatten(1), ref, rtol=1e-4, atol=1e-4)


def test_transplant_refuses_wrong_vgg_or_width():
    vgg_state = torchvision.models.vgg16(weights=None).state_dict()
    with pytest.raises(ValueError, match="vgg16_bn"):
        transplant_vgg(DeconvNet(width=TINY), vgg_state)


def test_imagenet_weights_offline_fail_clearly(tmp_path, monkeypatch):
    # An empty cache and no network: the error names how to provide the weights.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_get_torch_home", lambda: str(tmp_path))
    monkeypatch.setattr(
        torch.hub, "download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(OSError("network is unreachable"))
    )
    with pytest.raises(WeightsUnavailableError, match="--backbone-weights"):
        load_vgg_state_dict("imagenet", batch_norm=True)
    with pytest.raises(WeightsUnavailableError, match="not found"):
        load_vgg_state_dict(str(tmp_path / "missing.pth"), batch_norm=False)


def test_imagenet_weights_from_a_local_file(tmp_path):
    vgg = torchvision.models.vgg16(weights=None)
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(vgg.state_dict(), path)
    model = build_model("fcn32s", backbone_weights=str(path))
    assert torch.equal(model.fc6[0].weight.flatten(1), vgg.classifier[0].weight)


@pytest.mark.parametrize("arch", ["deconvnet", "fcn32s", "fcn16s", "fcn8s"])
def test_checkpoint_roundtrip_gives_identical_outputs(tmp_path, arch):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=4, width=TINY)
    for p in model.parameters():
        nn.init.normal_(p, std=0.05)  # non-trivial values everywhere, BN stats too below
    model.train()(torch.randn(2, 3, 224, 224))  # moves BN running stats
    model.eval()
    meta = CheckpointMeta(
        architecture=arch, num_classes=4, width=TINY, class_names=["bg", "a", "b", "c"],
        provenance={"data": "unit-test", "iteration": 7},
    )
    path = str(tmp_path / f"{arch}.safetensors")
    save_checkpoint(model, path, meta=meta, metrics={"miou": 0.5})
    loaded, got = load_checkpoint(path)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert type(loaded) is type(model) and not loaded.training
    assert got.architecture == arch and got.width == TINY and got.class_names == ["bg", "a", "b", "c"]
    assert got.provenance == {"data": "unit-test", "iteration": 7, "metrics": {"miou": 0.5}}
    assert len(got.palette) == 4 and got.mean == [0.485, 0.456, 0.406]
    assert len(got.checkpoint_id) == 16 and read_checkpoint_meta(path).checkpoint_id == got.checkpoint_id
    assert not list(tmp_path.glob(".tmp-*"))


def test_build_model_names_every_architecture_and_refuses_others(tmp_path):
    assert sorted(ARCHITECTURES) == ["deconvnet", "fcn16s", "fcn32s", "fcn8s"]
    strides = {name: getattr(build_model(name, num_classes=3, width=TINY), "stride", None) for name in ARCHITECTURES}
    assert strides == {"deconvnet": None, "fcn32s": 32, "fcn16s": 16, "fcn8s": 8}
    with pytest.raises(ValueError, match="fcn4s"):
        build_model("fcn4s", width=TINY)
    with pytest.raises(ValueError, match="coarser FCN"):
        build_model("deconvnet", width=TINY, init_from=FCN(num_classes=3, stride=32, width=TINY))
    # A checkpoint naming an architecture this version does not know is a CheckpointError.
    path = str(tmp_path / "f.safetensors")
    save_checkpoint(FCN(num_classes=2, stride=32, width=TINY), path)
    data = open(path, "rb").read().replace(b'\\"fcn32s\\"', b'\\"fcn64s\\"')
    open(path, "wb").write(data)
    with pytest.raises(CheckpointError, match="fcn64s"):
        load_checkpoint(path)


def test_checkpoint_through_fsspec_url():
    model = FCN(num_classes=2, stride=32, width=TINY)
    save_checkpoint(model, "memory://ckpts/f.safetensors")
    loaded, meta = load_checkpoint("memory://ckpts/f.safetensors")
    assert meta.architecture == "fcn32s" and isinstance(loaded, FCN)


def test_pickle_checkpoint_is_refused_without_unpickling(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pickle code ran')",))

    path = tmp_path / "evil.pt"
    torch.save({"state": Boom()}, path)
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(str(path))
    raw = tmp_path / "raw.pkl"
    import pickle

    raw.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(str(raw))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CheckpointError, match="not a safetensors"):
        load_checkpoint(str(junk))
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(str(tmp_path / "nope.safetensors"))


def test_full_width_counts():
    with torch.device("meta"):
        d, f8 = DeconvNet(), FCN(stride=8)
    # VGG16-BN conv + fc6/fc7 + mirrored decoder: ~252M parameters (paper's DeconvNet).
    assert 251e6 < param_count(d) < 253e6
    assert 134e6 < param_count(f8) < 135e6  # FCN-8s as published (134M)
    flops = forward_flops(d, (1, 3, 224, 224))
    # Encoder ~2x15.4 GMAC of VGG16 conv + fc, plus a decoder of about the same cost.
    assert 50e9 < flops < 70e9
