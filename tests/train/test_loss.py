"""The local-loss InfoNCE on 2 ranks (real gloo processes) equals the 1-rank loss on the same global batch."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from cnclip_scale.data.ids import id_hashes
from cnclip_scale.launch_env import free_port
from cnclip_scale.model import Tokenizer, build_model, model_config
from cnclip_scale.model.configs import TINY
from cnclip_scale.train.loss import clip_loss

GLOBAL_BATCH = 8
TEXTS = ["红色的苹果", "绿色的梨", "一只橘猫", "黑色的狗", "蓝色的汽车", "白色的房子", "黄色的香蕉", "紫色的葡萄"]
IMAGE_IDS = ["1", "2", "3", "3", "5", "6", "7", "8"]  # entries 2 and 3 show the same image: a planted false negative
TEXT_IDS = ["a", "b", "c", "d", "e", "a", "g", "h"]  # entries 0 and 5 share a caption id


def global_batch():
    torch.manual_seed(7)
    ids, mask = Tokenizer()(TEXTS)
    return torch.randn(GLOBAL_BATCH, 3, 64, 64), ids, mask


def tiny():
    torch.manual_seed(0)
    return build_model(model_config(TINY)).eval()  # eval: no dropout, so both runs see the same function


def run(model, images, ids, mask, image_ids=None, text_ids=None):
    img, txt, scale = model(images, ids, mask)
    if image_ids is not None:
        image_ids, text_ids = id_hashes(image_ids), id_hashes(text_ids)
    out = clip_loss(img, txt, scale, image_ids, text_ids)
    out["loss"].backward()
    return out


def _worker(rank, world, port, result_file, use_ids):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = tiny()
    images, ids, mask = global_batch()
    rows = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    extra = (IMAGE_IDS[rows], TEXT_IDS[rows]) if use_ids else ()
    out = run(model, images[rows], ids[rows], mask[rows], *extra)
    # What DeepSpeed/DDP do with gradients: average over ranks. The loss is averaged for the comparison.
    for p in model.parameters():
        dist.all_reduce(p.grad)
        p.grad /= world
    stats = torch.stack([out["loss"].detach(), out["i2t_acc"], out["t2i_acc"]])
    dist.all_reduce(stats)
    if rank == 0:
        torch.save({"stats": stats / world, "grads": {n: p.grad for n, p in model.named_parameters()}}, result_file)
    dist.destroy_process_group()


@pytest.mark.parametrize("use_ids", [False, True], ids=["plain", "false-negatives"])
def test_two_ranks_equal_one_rank(tmp_path, use_ids):
    result = tmp_path / "two_ranks.pt"
    mp.start_processes(_worker, args=(2, free_port(), str(result), use_ids), nprocs=2, start_method="spawn")
    two = torch.load(result, weights_only=True)

    model = tiny()
    extra = (IMAGE_IDS, TEXT_IDS) if use_ids else ()
    out = run(model, *global_batch(), *extra)
    one = torch.stack([out["loss"].detach(), out["i2t_acc"], out["t2i_acc"]])
    assert torch.allclose(two["stats"], one, atol=1e-6), (two["stats"], one)
    for name, p in model.named_parameters():
        assert torch.allclose(two["grads"][name], p.grad, atol=1e-6), name


def test_false_negatives_are_positives():
    torch.manual_seed(0)
    img = F.normalize(torch.randn(4, 8), dim=-1)
    txt = F.normalize(torch.randn(4, 8), dim=-1)
    txt[1] = img[0]  # entries 0 and 1 show the same image (id 7); image 0's best caption is entry 1's
    image_ids, text_ids = id_hashes(["7", "7", "8", "9"]), id_hashes(["a", "b", "c", "d"])
    scale = torch.tensor(10.0)
    out = clip_loss(img, txt, scale, image_ids, text_ids)

    target = torch.eye(4)
    target[0, 1] = target[1, 0] = 1.0
    target = target / target.sum(1, keepdim=True)
    logits = scale * img @ txt.t()
    expected = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    assert torch.allclose(out["loss"], expected, atol=1e-6)
    plain = clip_loss(img, txt, scale)
    assert not torch.allclose(plain["loss"], out["loss"])
    # Row 0 picks column 1: a hit when ids say they are the same image, a miss when every off-diagonal is negative.
    assert logits[0].argmax() == 1
    assert out["i2t_acc"] - plain["i2t_acc"] == pytest.approx(0.25)


def test_ids_hash_stably():
    a = id_hashes(["1000002", "abc", 42])
    assert torch.equal(a, id_hashes(["1000002", "abc", "42"]))
    assert a.dtype == torch.long and (a >= 0).all() and len(set(a.tolist())) == 3
