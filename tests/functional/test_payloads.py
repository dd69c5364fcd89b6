"""Values over 128 KiB go to the stack's S3 bucket (docs/payloads.md): payloads, step
results, token values and outputs up to 10 MiB round-trip, read back through the S3
and DynamoDB APIs of the embedded emulator; an 11 MB value is refused before anything
is stored; a swept run's objects are deleted with it."""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import timedelta
from typing import Any

import pytest

import rung
from rung._aws import sessions
from rung._util.clock import VirtualClock
from rung.models import RunStatus
from rung.testing import LocalEngine

MB = 1_000_000
FIVE_MB = "x" * (5 * MB)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _s3(engine: LocalEngine) -> Any:
    """An S3 client of the test's own, at the emulator's endpoint."""
    return sessions.client("s3", engine.endpoint_url, "us-east-1")


def _objects(engine: LocalEngine) -> dict[str, dict[str, Any]]:
    out = _s3(engine).list_objects_v2(Bucket=engine.blobs.bucket)
    return {o["Key"]: o for o in out.get("Contents", [])}


def _item(engine: LocalEngine, run_id: str, sk: str = "#RUN") -> dict[str, Any]:
    key = {"pk": {"S": f"RUN#{run_id}"}, "sk": {"S": sk}}
    out = engine.dynamodb.get_item(TableName=engine.table_name, Key=key, ConsistentRead=True)
    return out["Item"]  # type: ignore[no-any-return]


def _without_bucket(engine: LocalEngine) -> rung.Client:
    """A client of the engine's table and queue given no payload bucket (its user
    passed table_name= and queue_url= only)."""
    return rung.Client(
        engine.app,
        table_name=engine.table_name,
        queue_url=engine.queue_url,
        endpoint_url=engine.endpoint_url,
    )


def _app(calls: list[str], tokens: list[str]) -> rung.App:
    app = rung.App("payloads")

    @app.task(id="echo")
    def echo(ctx: rung.Context, payload: dict[str, Any]) -> dict[str, Any]:
        calls.append("echo")
        return {"size": len(payload["blob"]), "digest": _digest(payload["blob"])}

    @app.task(id="big-step")
    def big_step(ctx: rung.Context, payload: dict[str, Any]) -> dict[str, Any]:
        def make() -> str:
            calls.append("make")
            return "y" * int(payload["size"])

        value = ctx.step("make", make)
        ctx.wait(timedelta(minutes=5))  # the next attempt replays the step's checkpoint
        return {"size": len(value), "digest": _digest(value)}

    @app.task(id="big-output")
    def big_output(ctx: rung.Context, payload: dict[str, Any]) -> str:
        return "z" * int(payload["size"])

    @app.task(id="approval")
    def approval(ctx: rung.Context, payload: dict[str, Any]) -> dict[str, Any]:
        token = ctx.create_token("approve", timeout=timedelta(days=365))
        ctx.step("announce", lambda: tokens.append(token.id))
        value = ctx.wait_for_token(token)
        return {"size": len(value["document"]), "digest": _digest(value["document"])}

    @app.task(id="parent")
    def parent(ctx: rung.Context, payload: dict[str, Any]) -> dict[str, Any]:
        child = ctx.trigger_and_wait("big-output", {"size": payload["size"]})
        return {"size": len(child), "digest": _digest(child)}

    return app


def test_a_5_mb_payload_is_offloaded_encrypted_and_round_trips() -> None:
    calls: list[str] = []
    with LocalEngine(_app(calls, [])) as engine:
        handle = engine.trigger("echo", {"blob": FIVE_MB})
        # Stored as an object of the payload bucket, its item a pointer to it.
        pointer = _item(engine, handle.run_id)["payload"]["M"]
        key = pointer["s3"]["S"]
        assert key.startswith(f"runs/{handle.run_id}/") and key.endswith(".json")
        assert int(pointer["bytes"]["N"]) == len(FIVE_MB) + len('{"blob":""}')
        head = _s3(engine).head_object(Bucket=engine.blobs.bucket, Key=key)
        assert head["ServerSideEncryption"] == "AES256"
        assert head["ContentLength"] == int(pointer["bytes"]["N"])
        run = engine.wait(handle.run_id)
        assert run.status == RunStatus.COMPLETED
        assert run.output == {"size": 5 * MB, "digest": _digest(FIVE_MB)}
        assert engine.get_run(handle.run_id).payload == {"blob": FIVE_MB}
        # A listing leaves the value in S3 and says so; get_run reads it.
        [listed] = engine.client.list_runs(task="echo")
        assert isinstance(listed.payload, rung.Offloaded)
        assert listed.payload.size == int(pointer["bytes"]["N"])
        assert "get_run reads it" in repr(listed.payload)
        assert listed.output == run.output  # (small: inline)
    assert calls == ["echo"]


def test_values_up_to_128_kib_stay_inline_with_no_object() -> None:
    calls: list[str] = []
    with LocalEngine(_app(calls, [])) as engine:
        blob = "a" * (128 * 1024 - len('{"blob":""}'))  # exactly the inline limit
        handle = engine.trigger("echo", {"blob": blob})
        assert engine.wait(handle.run_id).output["size"] == len(blob)
        assert "S" in _item(engine, handle.run_id)["payload"]
        assert _objects(engine) == {}


def test_a_5_mb_step_result_is_replayed_from_s3_and_the_step_runs_once() -> None:
    calls: list[str] = []
    with LocalEngine(_app(calls, [])) as engine:
        # Every read goes to S3, as in a new Lambda container after the wait: this
        # process keeps nothing (the cache is a speed-up, not where values live).
        engine.blobs._remember = lambda key, text: None  # type: ignore[method-assign]
        handle = engine.trigger("big-step", {"size": 5 * MB})
        run = engine.wait(handle.run_id, timeout=60)
        assert run.status == RunStatus.COMPLETED, run.error
        assert run.output == {"size": 5 * MB, "digest": _digest("y" * (5 * MB))}
        assert calls == ["make"]  # replayed, not run again
        assert engine.blobs.requests["GetObject"] >= 1  # the replay read it from S3
        kinds = [str(e.type) for e in engine.history(handle.run_id)]
        assert kinds.count("WaitEnded") == 1  # resumed after the wait, in a later invocation
        [make] = [r for r in engine.store.load_steps(handle.run_id).values() if r.kind == "step"]
        assert make.result_json is not None and len(make.result_json) == 5 * MB + 2
        stored = _item(engine, handle.run_id, f"STEP#{make.step_id}")["result"]["M"]
        assert stored["s3"]["S"] in _objects(engine)


def test_a_5_mb_output_and_a_childs_5_mb_output_to_its_parent() -> None:
    with LocalEngine(_app([], [])) as engine:
        handle = engine.trigger("big-output", {"size": 5 * MB})
        assert engine.wait(handle.run_id).output == "z" * (5 * MB)
        assert "M" in _item(engine, handle.run_id)["output"]
        parent = engine.trigger("parent", {"size": 5 * MB})
        run = engine.wait(parent.run_id, timeout=60)
        assert run.output == {"size": 5 * MB, "digest": _digest("z" * (5 * MB))}


def test_a_5_mb_token_value_reaches_the_waiting_run_once_stored() -> None:
    tokens: list[str] = []
    with LocalEngine(_app([], tokens)) as engine:
        handle = engine.trigger("approval", {})
        assert engine.wait_for_token(handle.run_id).id == tokens[0]
        document = "d" * (5 * MB)
        state = engine.client.complete_token(tokens[0], {"document": document})
        assert state.status == "COMPLETED"
        run = engine.wait(handle.run_id, timeout=60)
        assert run.output == {"size": 5 * MB, "digest": _digest(document)}
        token_item = engine.dynamodb.get_item(
            TableName=engine.table_name,
            Key={"pk": {"S": f"TOKEN#{tokens[0]}"}, "sk": {"S": "#TOKEN"}},
            ConsistentRead=True,
        )["Item"]
        key = token_item["result"]["M"]["s3"]["S"]
        # The value and the wait's checkpoint of it are one object (content-addressed).
        assert list(_objects(engine)) == [key]
        stored = engine.client.get_token(tokens[0]).result_json
        assert stored is not None and json.loads(stored) == {"document": document}


def test_an_11_mb_payload_is_refused_before_anything_is_stored() -> None:
    with LocalEngine(_app([], [])) as engine:
        with pytest.raises(rung.PayloadTooLarge) as refused:
            engine.trigger("echo", {"blob": "x" * (11 * MB)})
        message = str(refused.value)
        assert "11,000,011 bytes" in message and "at most 10,485,760 bytes" in message
        assert _objects(engine) == {}
        assert engine.client.list_runs() == []
        assert (
            engine.sqs.get_queue_attributes(
                QueueUrl=engine.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
            )["Attributes"]["ApproximateNumberOfMessages"]
            == "0"
        )


def test_an_11_mb_step_result_or_token_value_is_refused_with_the_limit() -> None:
    tokens: list[str] = []
    with LocalEngine(_app([], tokens)) as engine:
        handle = engine.trigger("big-step", {"size": 11 * MB})
        run = engine.wait(handle.run_id, fail_fast=False)
        assert run.status == RunStatus.FAILED
        assert run.error is not None and "PayloadTooLarge" in run.error.type + run.error.message
        assert "at most 10,485,760 bytes" in run.error.message
        waiting = engine.trigger("approval", {})
        engine.wait_for_token(waiting.run_id)
        with pytest.raises(rung.PayloadTooLarge):
            engine.client.complete_token(tokens[0], "t" * (11 * MB))
        assert engine.client.get_token(tokens[0]).status == "WAITING"  # still open
        assert _objects(engine) == {}


def test_a_swept_run_takes_its_objects_with_it() -> None:
    with LocalEngine(_app([], [])) as engine:
        clock = engine.clock
        assert isinstance(clock, VirtualClock)
        done = engine.trigger("big-output", {"size": 2 * MB})
        engine.wait(done.run_id)
        keep = engine.trigger("approval", {})  # waits: never swept
        engine.wait_for_token(keep.run_id)
        assert len(_objects(engine)) == 1
        clock.advance(timedelta(days=31, minutes=10))
        assert engine.reconcile().expired.runs == 1
        assert _objects(engine) == {}
        assert engine.get_run(keep.run_id).status == RunStatus.WAITING


def test_a_client_without_a_bucket_refuses_values_over_128_kib_and_says_how() -> None:
    with LocalEngine(_app([], [])) as engine:
        client = _without_bucket(engine)
        with pytest.raises(rung.PayloadTooLarge) as refused:
            client.trigger("echo", {"blob": "x" * (200 * 1024)})
        assert "PayloadBucketName" in str(refused.value) and "bucket=" in str(refused.value)
        assert engine.client.list_runs() == []
        small = client.trigger("echo", {"blob": "ok"})
        assert engine.wait(small.run_id).output["size"] == 2


def test_an_offloaded_value_costs_one_put_and_is_read_once_per_process() -> None:
    calls: list[str] = []
    with LocalEngine(_app(calls, [])) as engine:
        before = dict(engine.blobs.requests)
        handle = engine.trigger("big-step", {"size": 1 * MB})
        engine.wait(handle.run_id, timeout=60)
        engine.get_run(handle.run_id)
        spent = {k: v - before[k] for k, v in engine.blobs.requests.items()}
    # the step's result: one put; read again from this process's cache on replay
    assert spent == {"PutObject": 1, "GetObject": 0, "ListObjectsV2": 0, "DeleteObjects": 0}


def test_concurrent_triggers_of_one_big_payload_store_it_per_run() -> None:
    with LocalEngine(_app([], [])) as engine:
        handles: list[rung.RunHandle] = []

        def trigger() -> None:
            handles.append(engine.trigger("echo", {"blob": "q" * (300 * 1024)}))

        threads = [threading.Thread(target=trigger) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len({h.run_id for h in handles}) == 4
        for h in handles:
            assert engine.wait(h.run_id).output["size"] == 300 * 1024
        assert len(_objects(engine)) == 4  # one per run, under its own prefix


def test_a_worker_without_a_bucket_fails_big_results_clearly_at_once() -> None:
    """A worker deployed without RUNG_PAYLOAD_BUCKET (its store has no bucket): a step
    result or an output over 128 KiB fails the run on its first attempt, saying why,
    rather than crashing the worker attempt after attempt."""
    with LocalEngine(_app([], [])) as engine:
        engine.store.blobs = None
        for task, what in (("big-step", "the result of step"), ("big-output", "the output")):
            handle = engine.trigger(task, {"size": 200_000})
            run = engine.wait(handle.run_id, fail_fast=False, timeout=60)
            assert (run.status, run.attempt) == (RunStatus.FAILED, 1), run.error
            assert run.error is not None and run.error.type == "PayloadTooLarge"
            assert what in run.error.message and "RUNG_PAYLOAD_BUCKET" in run.error.message
        assert _objects(engine) == {}


def test_the_cli_shows_a_big_payload_abridged_and_json_whole() -> None:
    from click.testing import CliRunner

    from rung.cli.runs import list_runs, show_run

    with LocalEngine(_app([], [])) as engine:
        handle = engine.trigger("big-output", {"size": 300_000})
        engine.wait(handle.run_id)

        class Target:  # what `rung runs ...` reads through: the engine's own client
            def client(self) -> rung.Client:
                return engine.client

        shown = CliRunner().invoke(show_run, [handle.run_id], obj=Target()).output
        whole = json.loads(
            CliRunner().invoke(show_run, [handle.run_id, "--json"], obj=Target()).output
        )
        listed = json.loads(CliRunner().invoke(list_runs, ["--json"], obj=Target()).output)
    assert "300,002 bytes of JSON in all; --json prints it whole" in shown
    assert len(shown) < 10_000
    assert whole["output"] == "z" * 300_000
    assert [r["output"] for r in listed] == [{"offloaded_bytes": 300_002}]


def test_a_batch_whose_bucket_refuses_an_upload_reports_that_item_and_stores_the_rest() -> None:
    """The bucket gone (deleted by hand): S3 refuses the big item's upload, which is
    reported as that item's failure with nothing stored for it; the small items are
    stored and run."""
    with LocalEngine(_app([], [])) as engine:
        engine.blobs.drop()
        results = engine.client.batch_trigger(
            "echo", [{"blob": "a"}, {"blob": "b" * (200 * 1024)}, {"blob": "c"}]
        )
        assert [r.ok for r in results] == [True, False, True]
        error = results[1].error
        assert error is not None and "could not be stored in S3" in error.message
        assert "NoSuchBucket" in error.message
        for r in (results[0], results[2]):
            assert r.handle is not None and engine.wait(r.handle.run_id).output["size"] == 1
        assert len(engine.client.list_runs()) == 2
        engine.blobs.client.create_bucket(Bucket=engine.blobs.bucket)  # (for the teardown)


def test_a_client_without_a_bucket_reading_an_offloaded_run_is_told_how() -> None:
    with LocalEngine(_app([], [])) as engine:
        handle = engine.trigger("big-output", {"size": 200_000})
        engine.wait(handle.run_id)
        client = _without_bucket(engine)
        with pytest.raises(LookupError) as refused:
            client.get_run(handle.run_id)
        assert "200,002 bytes" in str(refused.value) and "bucket=" in str(refused.value)
        assert isinstance(refused.value, rung.RungError)
        [listed] = client.list_runs()  # a listing needs no bucket
        assert listed.output == rung.Offloaded(size=200_002)


def test_a_worker_that_cannot_read_a_payload_fails_the_run_at_once_and_frees_it() -> None:
    """The claim reads no object (the run item holds a pointer); the payload is read
    where the body needs it, and a payload that cannot be read fails the run on its
    first attempt, saying why, instead of leaving it RUNNING under a lease."""
    with LocalEngine(_app([], []), workers=0) as engine:
        handle = engine.trigger("echo", {"blob": "x" * 200_000})
        engine.store.blobs = None  # a worker deployed without RUNG_PAYLOAD_BUCKET
        [message] = engine.queue.receive(max_messages=1)
        engine.worker.handle(message)
        run = engine.store.get_run(handle.run_id)
    assert (run.status, run.attempt) == (RunStatus.FAILED, 1)
    assert run.error is not None and run.error.type == "ValueNotFound"
    assert "payload cannot be read" in run.error.message
    assert "RUNG_PAYLOAD_BUCKET" in run.error.message


def test_status_checks_read_no_objects_so_a_client_without_a_bucket_can_operate() -> None:
    """Idempotent re-triggers, cancel (with children), token answers to an ended run and
    listing tokens need no value: a client without the bucket does them all."""
    tokens: list[str] = []
    with LocalEngine(_app([], tokens)) as engine:
        client = _without_bucket(engine)
        done = engine.client.trigger("big-output", {"size": 200_000}, idempotency_key="k")
        engine.wait(done.run_id)
        again = client.trigger("big-output", {"size": 200_000}, idempotency_key="k")
        assert (again.run_id, again.created) == (done.run_id, False)
        waiting = engine.trigger("approval", {"pad": "p" * 200_000})
        engine.wait_for_token(waiting.run_id)
        before = dict(engine.blobs.requests)
        assert [t.id for t in client.list_tokens(waiting.run_id)] == tokens
        canceled = client.cancel(waiting.run_id, "no longer needed")
        assert canceled.status == RunStatus.CANCELED
        assert isinstance(canceled.payload, rung.Offloaded)
        with pytest.raises(rung.TokenAlreadyResolved):
            client.complete_token(tokens[0], {"document": "late"})
        assert engine.blobs.requests["GetObject"] == before["GetObject"]
        # The same calls by a client that has the bucket read no object either.
        bucketed = rung.Client(
            engine.app,
            table_name=engine.table_name,
            queue_url=engine.queue_url,
            endpoint_url=engine.endpoint_url,
            bucket=engine.blobs.bucket,
        )
        assert bucketed._store.blobs is not None
        reads = bucketed._store.blobs.requests  # (its own S3 requests)
        repeat = bucketed.trigger("big-output", {"size": 200_000}, idempotency_key="k")
        assert repeat.run_id == done.run_id
        other = engine.trigger("approval", {"pad": "q" * 200_000})
        engine.wait_for_token(other.run_id)
        assert [t.id for t in bucketed.list_tokens(other.run_id)] == tokens[1:]
        assert bucketed.cancel(other.run_id).status == RunStatus.CANCELED
        with pytest.raises(rung.TokenAlreadyResolved):
            bucketed.complete_token(tokens[1], {"document": "late"})
        assert reads["GetObject"] == 0


def test_a_batch_without_a_bucket_fails_only_its_big_items_and_stores_the_rest() -> None:
    with LocalEngine(_app([], [])) as engine:
        client = _without_bucket(engine)
        items = [{"blob": str(n)} for n in range(30)]
        items[27] = {"blob": "x" * 200_000}
        results = client.batch_trigger("echo", items)
        assert [n for n, r in enumerate(results) if not r.ok] == [27]
        assert results[27].error is not None and "PayloadBucketName" in results[27].error.message
        assert all(r.enqueued for n, r in enumerate(results) if n != 27)
        for r in results:
            if r.handle is not None:
                assert engine.wait(r.handle.run_id).status == RunStatus.COMPLETED
        assert len(engine.client.list_runs(limit=100)) == 29


def test_the_sweep_deletes_objects_no_item_names_and_a_repeat_puts_none() -> None:
    """A debounced burst whose big payload was replaced by a small one left an object
    that no item names: the sweep lists the run's prefix and deletes it. A repeated
    idempotent trigger of a big payload puts no object at all.

    On the wall clock (a virtual one would jump to the burst's due time between the
    two triggers); the sweep is then run as of 31 days later."""
    with LocalEngine(_app([], []), virtual_time=False) as engine:
        burst = rung.Debounce("k", window=timedelta(seconds=10))  # (a loaded machine)
        first = engine.client.trigger("echo", {"blob": "b" * 200_000}, debounce=burst)
        last = engine.client.trigger("echo", {"blob": "s"}, debounce=burst)
        assert last.run_id == first.run_id
        assert engine.wait(first.run_id).output["size"] == 1
        assert len(_objects(engine)) == 1  # the replaced payload's
        once = engine.client.trigger("echo", {"blob": "i" * 200_000}, idempotency_key="i")
        engine.wait(once.run_id)
        before = engine.blobs.requests["PutObject"]
        again = engine.client.trigger("echo", {"blob": "j" * 200_000}, idempotency_key="i")
        assert again.run_id == once.run_id and engine.blobs.requests["PutObject"] == before
        assert len(_objects(engine)) == 2
        later = engine.clock.now() + timedelta(days=31, minutes=10)
        assert engine.store.sweep_expired(later, 100).runs == 2
        assert _objects(engine) == {}


def test_a_sweep_that_cannot_delete_objects_says_so_and_sweeps_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with LocalEngine(_app([], [])) as engine:
        clock = engine.clock
        assert isinstance(clock, VirtualClock)
        runs = [engine.trigger("big-output", {"size": 200_000}) for _ in range(2)]
        for handle in runs:
            engine.wait(handle.run_id)
        engine.blobs.drop()  # the bucket gone (deleted by hand)
        clock.advance(timedelta(days=31, minutes=10))
        assert engine.reconcile().expired.runs == 2  # both runs' items are swept
        assert "could not be deleted" in caplog.text and "ReconcilerRole" in caplog.text
        for handle in runs:
            with pytest.raises(rung.RunNotFound):
                engine.client.get_run(handle.run_id)
        engine.blobs.client.create_bucket(Bucket=engine.blobs.bucket)  # (for the teardown)
