"""course_utils.layers: layer tables, receptive fields, feature maps and FLOP counts."""
from __future__ import annotations

import pytest

import course_utils as cu

def test_layer_table_counts_and_receptive_field():
    table = cu.layer_table(cu.KapilshAutoencoder(), (1, 28, 28))
    assert table["parameters"].sum() == 1_077
    assert table["output shape"].tolist()[-1] == "1x28x28"
    convs = table[table["type"].isin(["Conv2d", "MaxPool2d"])]
    assert convs["receptive field"].tolist() == [3, 4, 8, 10]  # 3x3, pool, 3x3, pool
    assert cu.receptive_field([(3, 1), (2, 2), (3, 1), (2, 2)]) == [3, 4, 8, 10]
    first = table.iloc[0]  # Conv2d(1->16, 3x3) on 28x28: 2 * 9 * 16 * 784 FLOPs
    assert first["MFLOPs"] == pytest.approx(2 * 9 * 16 * 28 * 28 / 1e6)


def test_flops_per_image_is_three_times_forward_for_training():
    model = cu.PaperspaceAutoencoder()
    forward = cu.flops_per_image(model, (3, 32, 32), backward=False)
    table_forward = cu.layer_table(model, (3, 32, 32))["MFLOPs"].sum() * 1e6
    assert forward == pytest.approx(table_forward, rel=0.01)
    assert cu.flops_per_image(model, (3, 32, 32)) == pytest.approx(3 * forward, rel=0.05)




def test_feature_maps_by_layer(fashion_test):
    model = cu.ConvClassifier(1, 10, (8, 16, 32))
    maps = cu.feature_maps(model, cu.to_float(fashion_test.images[:3]))
    assert [tuple(m.shape) for m in maps.values()] == [(3, 8, 28, 28), (3, 16, 14, 14), (3, 32, 7, 7)]
