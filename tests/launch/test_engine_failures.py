"""How a job that failed on a real engine reads (launch/engine_failures.py), for the failures whose text
is the engine's own: the tests that provoke them on the engines are in test_engines.py."""
from captionbeam.launch.engine_failures import explain_failure

PORTABLE = {"runner": "PortableRunner", "job_endpoint": "127.0.0.1:8099"}


def test_prisms_stuck_job_check_reads_as_an_engine_bug_to_rerun():
    """The text Prism's job service sent when it failed the journey's features job (13:52 on 2026-12-06,
    from its log): a rerun of the command is what to do (before: "the job failed; rerun with DEBUG")."""
    exc = RuntimeError("Pipeline job-001 failed in state FAILED: nothing in progress and no refreshes with non zero "
                       "pending elements: 3\nElementManager Now: 1796565173771 processingTimeEvents: map[]")
    message = explain_failure(exc, PORTABLE)
    assert message.startswith("the job server at 127.0.0.1:8099: the Beam job failed: Pipeline job-001 failed")
    assert "stopped the job as stuck" in message and "rerun the command" in message, message
    assert "stuck" in explain_failure(exc, {"runner": "PrismRunner"})


def test_other_engine_failures_keep_their_hints():
    assert "stopped answering" in explain_failure(RuntimeError("grpc: StatusCode.UNAVAILABLE"), PORTABLE)
    assert "the engine's own reason is above" in explain_failure(RuntimeError("boom"), PORTABLE)
    assert explain_failure(RuntimeError("boom"), {"runner": "DirectRunner"}) is None


def _raised(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the test keeps what was raised, traceback included
        return e
    raise AssertionError("nothing raised")


def test_our_own_error_after_a_portable_job_is_not_blamed_on_the_engine():
    """A KeyError in bulk's own accounting after a Spark job read as "the job server at ...: the Beam job
    failed: 'failed'" (sparkcount, 2026-12-06): a failure raised with no Beam or gRPC frame is ours, shown as
    it is (None: the CLI re-raises it)."""
    def accounting():
        return {"captioned": 40}["failed"]
    assert explain_failure(_raised(accounting), PORTABLE) is None


def test_a_failure_raised_through_beam_keeps_the_engine_message():
    from apache_beam.io.filesystems import FileSystems
    exc = _raised(lambda: FileSystems.open("/nonexistent/captionbeam/file"))
    message = explain_failure(exc, PORTABLE)
    assert message and message.startswith("the job server at 127.0.0.1:8099: the Beam job failed"), message
