"""Job progress as WatchJob streams it: every message is one consistent snapshot of the job,
and the stream always ends with the job's final state, even when the job ends while the
previous message is still being sent (the gate test once ended on "validating")."""

import asyncio
import threading

from oddity.trainer.jobs import FAILED, QUEUED, RUNNING, Job, JobBoard


def test_the_stream_ends_with_the_final_state_when_the_job_ends_between_messages(tmp_path):
    async def scenario() -> list[tuple[str, str, str]]:
        board = JobBoard(tmp_path / "running", asyncio.get_running_loop())
        job = board.add(Job(dataset="d", trigger="api"))
        received = []
        async for snapshot in board.watch(job.id):
            received.append((snapshot.state, snapshot.phase, snapshot.message))
            if not snapshot.done:  # the job fails while this message is on its way
                board.update(job.id, state=FAILED, phase="done", message="the reason")
        return received

    assert asyncio.run(scenario()) == [(QUEUED, "", ""), (FAILED, "done", "the reason")]


def test_a_watcher_sees_every_update_of_a_worker_thread_whole(tmp_path):
    async def scenario() -> list[Job]:
        board = JobBoard(tmp_path / "running", asyncio.get_running_loop())
        job = board.add(Job(dataset="d", trigger="api"))

        def worker() -> None:
            for i in range(1, 3001):
                board.update(job.id, state=RUNNING, phase=f"p{i}", epoch=i, message=f"m{i}", loss=float(i))
            board.update(job.id, state=FAILED, phase="done", epoch=-1, message="the reason", loss=-1.0)

        thread = threading.Thread(target=worker)
        thread.start()
        seen = [snapshot async for snapshot in board.watch(job.id)]
        thread.join()
        return seen

    seen = asyncio.run(scenario())
    assert (seen[-1].state, seen[-1].message, seen[-1].epoch) == (FAILED, "the reason", -1)
    running = [job for job in seen if job.state == RUNNING]
    assert all((j.phase, j.message, j.loss) == (f"p{j.epoch}", f"m{j.epoch}", j.epoch) for j in running)
    assert [j.epoch for j in running] == sorted(j.epoch for j in running)
