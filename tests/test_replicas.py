"""course_utils.replicas: the seed tutorials' models (and UvA tutorial 9's), exact and with an encode."""
from __future__ import annotations

import pytest
import torch

import course_utils as cu

@pytest.mark.parametrize("cls, kwargs, expected", [
    (cu.GeeksforGeeksAutoencoder, {}, 3_211),
    (cu.PaperspaceAutoencoder, {"latent": 200}, 1_786_795),
    (cu.PaperspaceAutoencoder, {"latent": 1000}, 8_341_195),
    (cu.KapilshAutoencoder, {}, 1_077),
    (cu.AnothertechsAutoencoder, {}, 263_018_231),
])
def test_seed_replicas_parameter_counts_match_the_articles(cls, kwargs, expected):
    with torch.device("meta"):  # count without allocating (anothertechs would need 1 GB)
        model = cls(**kwargs)
    assert cu.count_parameters(model) == expected


@pytest.mark.parametrize("cls, shape", [(cu.GeeksforGeeksAutoencoder, (3, 64, 64)),
                                        (cu.PaperspaceAutoencoder, (3, 32, 32)),
                                        (cu.KapilshAutoencoder, (1, 28, 28))])
def test_seed_replicas_reconstruct_their_input_shape(cls, shape):
    assert cls()(torch.rand(2, *shape)).shape == (2, *shape)


def test_paperspace_hand_count_of_its_layers():
    # encoder convs 448+2320+4640+9248+18496+36928, Linear 4096*200+200; the decoder mirrors it
    encoder = 448 + 2320 + 4640 + 9248 + 18496 + 36928 + 4096 * 200 + 200
    decoder = 200 * 4096 + 4096 + 36928 + 18464 + 9248 + 4624 + 2320 + 435
    assert cu.count_parameters(cu.PaperspaceAutoencoder(200)) == encoder + decoder




def test_uva_tutorial9_hand_count_of_its_layers():
    # c=32: encoder convs 896+9248+18496+36928+36928, Linear 1024*256+256; decoder Linear 256*1024+1024,
    # then ConvTranspose 64->64, Conv 64->64, ConvTranspose 64->32, Conv 32->32, ConvTranspose 32->3
    encoder = 896 + 9248 + 18496 + 36928 + 36928 + 1024 * 256 + 256
    decoder = 256 * 1024 + 1024 + 36928 + 36928 + 18464 + 9248 + 867
    model = cu.UvATutorial9Autoencoder(256)
    assert cu.count_parameters(model) == encoder + decoder
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32) and model.value_range == (-1.0, 1.0)
    with pytest.raises(cu.CourseError, match="latent must be positive"):
        cu.UvATutorial9Autoencoder(0)


@pytest.mark.parametrize("model, shape", [(cu.PaperspaceAutoencoder(200), (3, 32, 32)),
                                          (cu.PaperspaceAutoencoder(1000), (3, 32, 32)),
                                          (cu.KapilshAutoencoder(), (1, 28, 28)),
                                          (cu.UvATutorial9Autoencoder(128), (3, 32, 32))],
                         ids=["paperspace-200", "paperspace-1000", "kapilsh", "uva-128"])
def test_encode_gives_the_code_size_and_the_decoder_takes_it(model, shape):
    x = torch.rand(2, *shape)
    code = model.encode(x)
    assert code[0].numel() == model.code_size
    assert torch.equal(model.decoder(code), model(x))  # forward is decode(encode(x))
    assert model.source and len(model.value_range) == 2


def test_anothertechs_encode_gives_its_100_values():
    with torch.device("meta"):  # shapes only: its 263M parameters would need 1 GB
        model = cu.AnothertechsAutoencoder()
        assert model.encode(torch.empty(2, 3, 32, 32)).shape == (2, model.code_size) == (2, 100)


def test_geeksforgeeks_code_is_a_quarter_size_map_of_8_channels():
    model = cu.GeeksforGeeksAutoencoder()
    assert model.encode(torch.rand(1, 3, 64, 64)).shape == (1, 8, 16, 16)  # published: 2,048 values
    assert model.encode(torch.rand(1, 3, 32, 32)).shape == (1, 8, 8, 8)  # on CIFAR-10: 512
