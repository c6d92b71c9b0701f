"""Disk weight sync to `tirl serve`: every server loads the trainer's weights, reports the version,
drops its prefix cache and then samples exactly what the trainer's model samples; a failed load is
an error naming the server."""

import json
import urllib.request

import pytest
import torch

from eval_scripts import FakeSandbox
from fixtures_models import tiny_model, tiny_model_dir, tiny_tokenizer  # noqa: F401
from tirl.distributed.server_sync import WeightSyncError, push_weights, save_weights
from tirl.distributed.weights import model_hash
from tirl.generation.hf import HFGenerator
from tirl.generation.openai import OpenAIGenerator
from tirl.generation.server import CompletionServer, ServerThread
from tirl.models import load_model
from tirl.rollout import encode_prompt, rollout


@pytest.fixture
def two_servers(tiny_model_dir, tiny_tokenizer):  # noqa: F811
    torch.set_num_threads(1)
    servers = [CompletionServer(HFGenerator(load_model(tiny_model_dir, device="cpu"), tiny_tokenizer), tiny_tokenizer,
                                "tiny", cache_slots=8) for _ in range(2)]
    threads = [ServerThread(s.app()) for s in servers]
    yield servers, [t.url for t in threads]
    for t in threads:
        t.close()


def _health(url):
    with urllib.request.urlopen(f"{url}/health", timeout=10) as r:
        return json.loads(r.read())


def test_servers_load_the_trainers_weights_report_the_version_and_flush(two_servers, tiny_model_dir, tiny_tokenizer,
                                                                         tmp_path):  # noqa: F811
    servers, urls = two_servers
    trainer = load_model(tiny_model_dir, device="cpu")
    prompts = [encode_prompt(tiny_tokenizer, q, "retool") for q in ["What is 12 times 34?", "What is 5 times 6?"]]
    with OpenAIGenerator(urls[0], tiny_tokenizer) as gen:  # fill the prefix cache with old-weight entries
        rollout(gen, prompts, tiny_tokenizer, FakeSandbox(), "retool", n=1, max_new_tokens=16, temperature=0.0)
    assert servers[0]._seqs
    with torch.no_grad():
        for p in trainer.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = save_weights(trainer, tmp_path, 3)
    assert push_weights(urls, path, 3) == {u: 3 for u in urls}
    assert [model_hash(s.generator.model) for s in servers] == [model_hash(trainer)] * 2
    assert [_health(u)["weight_version"] for u in urls] == [3, 3]
    assert not servers[0]._seqs and not servers[0].generator.cached_keys()
    kw = dict(n=1, max_new_tokens=16, temperature=0.0)
    local, _ = rollout(HFGenerator(trainer, tiny_tokenizer), prompts, tiny_tokenizer, FakeSandbox(), "retool", **kw)
    with OpenAIGenerator(urls[1], tiny_tokenizer) as gen:
        remote, _ = rollout(gen, prompts, tiny_tokenizer, FakeSandbox(), "retool", **kw)
    assert [t.response_ids for t in remote] == [t.response_ids for t in local]
    save_weights(trainer, tmp_path, 4)
    push_weights(urls, tmp_path / "v4", 4)
    assert not (tmp_path / "v3").exists()  # older versions go once every server holds the new one


def test_a_server_that_cannot_load_is_named(two_servers, tmp_path):
    _, urls = two_servers
    with pytest.raises(WeightSyncError, match=rf"{urls[0]} did not load weights version 2"):
        push_weights(urls[:1], tmp_path / "nothing-here", 2)
    assert _health(urls[0])["weight_version"] is None
