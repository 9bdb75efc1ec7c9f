"""The log lines Chinese-CLIP users grep: their exact format."""

from cnclip_scale.train.logs import train_line, valid_line

TRAIN = dict(
    step=20,
    max_steps=600,
    epoch=0,
    epoch_samples=320,
    samples_per_epoch=1344,
    loss=2.3548861,
    i2t_acc=0.09375,
    t2i_acc=0.140625,
    data_time=0.0123,
    batch_time=0.4,
    lr=0.00031415,
    logit_scale=2.6592,
    global_batch_size=16,
    samples_per_s=40.04,
    loss_scale=1.0,
    skipped_steps=0,
)


def test_train_line_is_the_seeds_format():
    assert train_line(TRAIN) == (
        "Global Steps: 20/600 | Train Epoch: 1 [320/1344 (24%)] | Loss: 2.354886 | Image2Text Acc: 9.38 | "
        "Text2Image Acc: 14.06 | Data Time: 0.012s | Batch Time: 0.400s | LR: 0.000314 | logit_scale: 2.659 | "
        "Global Batch Size: 16 | Samples/s: 40.0 | Loss Scale: 1 | Skipped Steps: 0"
    )


def test_valid_line_adds_recall_only_when_measured():
    metrics = dict(
        step=30,
        epoch=1,
        valid_loss=0.9245941,
        valid_i2t_acc=0.5,
        valid_t2i_acc=0.25,
        logit_scale=2.658,
        valid_batch_size=4,
    )
    line = valid_line(metrics)
    assert line == (
        "Validation Result (epoch 2 @ 30 steps) | Valid Loss: 0.924594 | Image2Text Acc: 50.00 | "
        "Text2Image Acc: 25.00 | logit_scale: 2.658 | Valid Batch Size: 4"
    )
    recall = {f"{d}_r{k}": v for d in ("t2i", "i2t") for k, v in ((1, 22.2222), (5, 66.67), (10, 100.0))}
    assert valid_line({**metrics, **recall, "t2i_mean_recall": 62.96}) == line + (
        " | Text2Image R@1/5/10: 22.22/66.67/100.00 | Image2Text R@1/5/10: 22.22/66.67/100.00"
    )
