"""The image–text matching heatmap (DAM Fig. 4): which images it picks and what it shows, by hand."""
from __future__ import annotations

import numpy as np

from workbench.analysis.figures import matching_heatmap


def test_matching_heatmap_shows_first_images_of_each_class_as_class_rows():
    scores = np.arange(5 * 3, dtype=float).reshape(5, 3)  # 5 images, 3 classes
    labels = np.array([2, 0, 0, 1, 2])
    fig = matching_heatmap(scores, labels, ["cat", "dog", "owl"], per_class=1)
    z = np.asarray(fig.data[0].z)
    # picked images: class 0 -> image 1, class 1 -> image 3, class 2 -> image 0; rows are classes
    assert z.tolist() == [[3.0, 9.0, 0.0], [4.0, 10.0, 1.0], [5.0, 11.0, 2.0]]
    assert list(fig.data[0].x) == ["cat #0", "dog #1", "owl #2"] and list(fig.data[0].y) == ["cat", "dog", "owl"]
    two = matching_heatmap(scores, labels, ["cat", "dog", "owl"], per_class=2)
    assert np.asarray(two.data[0].z).shape == (3, 5)
