"""IoUMetric on hand-computed cases: ignore_index, absent classes (NaN), nan_to_num, Dice/F-score, merging."""

from __future__ import annotations

import math

import pytest
import torch

from semseg.evaluation import IoUMetric, format_table, intersect_and_union

# 2x2 image, 3 classes. The 255 pixel is ignored; the kept pixels are pred [0, 1, 2], label [0, 1, 1]:
# intersect [1, 1, 0], pred area [1, 1, 1], label area [1, 2, 0], union [1, 2, 1].
PRED = torch.tensor([[0, 1], [2, 2]])
LABEL = torch.tensor([[0, 1], [1, 255]])


def test_intersect_and_union_counts():
    inter, union, pred_area, label_area = intersect_and_union(PRED, LABEL, 3, 255)
    assert inter.tolist() == [1, 1, 0]
    assert union.tolist() == [1, 2, 1]
    assert pred_area.tolist() == [1, 1, 1]
    assert label_area.tolist() == [1, 2, 0]


def test_values_outside_classes_count_nowhere():
    # pred 5 and label 7 are outside [0, 3); 9 is the ignore index here.
    pred = torch.tensor([5, 0, 1, 2])
    label = torch.tensor([0, 7, 1, 9])
    inter, union, pred_area, label_area = intersect_and_union(pred, label, 3, ignore_index=9)
    assert inter.tolist() == [0, 1, 0]
    assert pred_area.tolist() == [1, 1, 0]  # pred 5 dropped; the pixel under label 9 is ignored
    assert label_area.tolist() == [1, 1, 0]  # label 7 dropped
    assert union.tolist() == [2, 1, 0]


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        intersect_and_union(PRED, LABEL[:1], 3)


def test_miou_macc_aacc_and_nan_class():
    metric = IoUMetric(["a", "b", "c"])
    metric.process(PRED[None], LABEL[None])
    res = metric.compute()
    assert res["aAcc"] == 66.67
    assert res["mIoU"] == 50.0  # (1 + 0.5 + 0) / 3
    assert res["mAcc"] == 75.0  # class c has no label pixel: Acc NaN, skipped
    assert res["per_class"]["b"] == {"IoU": 50.0, "Acc": 50.0}
    assert res["per_class"]["c"]["IoU"] == 0.0
    assert math.isnan(res["per_class"]["c"]["Acc"])
    assert list(res) == ["aAcc", "mIoU", "mAcc", "per_class"]


def test_class_absent_from_pred_and_label_is_skipped_or_replaced():
    metric = IoUMetric(["a", "b", "c", "d"])
    metric.process([PRED], [LABEL])
    res = metric.compute()
    assert res["mIoU"] == 50.0 and res["mAcc"] == 75.0  # d: 0/0 -> NaN, left out of the means
    assert math.isnan(res["per_class"]["d"]["IoU"])

    metric = IoUMetric(["a", "b", "c", "d"], nan_to_num=0)
    metric.process([PRED], [LABEL])
    res = metric.compute()
    assert res["mIoU"] == 37.5  # (1 + 0.5 + 0 + 0) / 4
    assert res["mAcc"] == 37.5
    assert res["per_class"]["d"]["IoU"] == 0.0


def test_dice_and_fscore():
    metric = IoUMetric(["a", "b", "c"], iou_metrics=["mIoU", "mDice", "mFscore"])
    metric.process([PRED], [LABEL])
    res = metric.compute()
    assert res["mDice"] == 55.56  # Dice [1, 2/3, 0]
    assert res["mPrecision"] == 66.67  # [1, 1, 0]
    assert res["mRecall"] == 75.0  # [1, 0.5, NaN]
    assert res["mFscore"] == 83.33  # [1, 2/3, NaN]
    assert set(res["per_class"]["a"]) == {"IoU", "Acc", "Dice", "Fscore", "Precision", "Recall"}

    beta2 = IoUMetric(["a", "b", "c"], iou_metrics="mFscore", beta=2)
    beta2.process([PRED], [LABEL])
    # class b: P = 1, R = 0.5 -> 5 * 0.5 / (4 + 0.5) = 0.5556
    assert beta2.compute()["per_class"]["b"]["Fscore"] == 55.56


def test_accumulates_over_images_not_per_image_means():
    # Image 1: all 4 pixels class 0, correct. Image 2: 1 pixel class 1 predicted as 0.
    metric = IoUMetric(["a", "b"])
    metric.process([torch.zeros(2, 2, dtype=torch.long)], [torch.zeros(2, 2, dtype=torch.long)])
    metric.process([torch.zeros(1, 1, dtype=torch.long)], [torch.ones(1, 1, dtype=torch.long)])
    res = metric.compute()
    assert res["aAcc"] == 80.0
    assert res["per_class"]["a"]["IoU"] == 80.0  # 4 / (5 + 4 - 4)
    assert res["per_class"]["b"]["IoU"] == 0.0
    assert metric.num_images == 2


def test_merge_equals_single_pass_and_reset():
    gen = torch.Generator().manual_seed(0)
    preds = torch.randint(0, 5, (4, 9, 11), generator=gen)
    labels = torch.randint(0, 6, (4, 9, 11), generator=gen)
    labels[labels == 5] = 255
    whole = IoUMetric([str(i) for i in range(5)])
    whole.process(preds, labels)
    part1, part2 = IoUMetric([str(i) for i in range(5)]), IoUMetric([str(i) for i in range(5)])
    part1.process(preds[:1], labels[:1])
    part2.process(preds[1:], labels[1:])
    part1.merge(part2)
    assert torch.equal(part1.state_tensors(), whole.state_tensors())
    assert part1.num_images == 4
    assert part1.compute() == whole.compute()
    whole.reset()
    assert whole.state_tensors().sum() == 0


def test_all_reduce_without_distributed_is_a_no_op():
    metric = IoUMetric(["a", "b", "c"])
    metric.process([PRED], [LABEL])
    before = metric.state_tensors().clone()
    metric.all_reduce()
    assert torch.equal(metric.state_tensors(), before)


def test_prefix_unknown_metric_and_format_table():
    metric = IoUMetric(["road", "sky", "c"], prefix="val")
    metric.process([PRED], [LABEL])
    res = metric.compute()
    assert res["val/mIoU"] == 50.0
    table = format_table(res["per_class"])
    assert "road" in table and "IoU" in table and "nan" in table and "50.00" in table
    with pytest.raises(KeyError, match="mBogus"):
        IoUMetric(["a"], iou_metrics=["mBogus"])


def _all_reduce_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        metric = IoUMetric(["a", "b", "c"])
        if rank == 0:
            metric.process([PRED], [LABEL])
        else:  # a second image, only on rank 1: class c is labelled and predicted right
            metric.process([torch.tensor([[2, 2]])], [torch.tensor([[2, 0]])])
        metric.all_reduce()
        torch.save({"counts": metric.state_tensors(), "n": metric.num_images}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_all_reduce_sums_counts_across_processes(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_all_reduce_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    single = IoUMetric(["a", "b", "c"])
    single.process([PRED, torch.tensor([[2, 2]])], [LABEL, torch.tensor([[2, 0]])])
    for rank in range(2):
        state = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.equal(state["counts"], single.state_tensors())
        assert state["n"] == 2
