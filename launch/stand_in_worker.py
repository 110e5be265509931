"""A stand-in SDK worker: connects to the runner as the worker it replaces and fails every instruction with a reason.

When the cluster's pool has given up on a worker (killed again and again while it started), the runner still
waits for that worker id to connect, and Beam's runner waits without end. The pool starts this in its place: it
connects the control stream under the same worker id and answers each instruction with an error naming the
reason, so the runner fails the task (the engine's restart strategy then runs the job again on fresh workers, or
fails it with that reason), and ends when the runner closes the stream.

    python -m captionbeam.launch.stand_in_worker CONTROL_URL WORKER_ID REASON
"""
from __future__ import annotations

import queue
import sys
from typing import Iterator, List, Optional

CONNECT_TIMEOUT_S = 60


def error_response(request, reason: str):
    """The answer to one of the runner's instructions: its id, and the reason as the error."""
    from apache_beam.portability.api import beam_fn_api_pb2
    return beam_fn_api_pb2.InstructionResponse(instruction_id=request.instruction_id, error=reason)


def data_urls(descriptor) -> List[str]:
    """The runner's data endpoints a bundle of ``descriptor`` (a ``ProcessBundleDescriptor``) reads and writes."""
    from apache_beam.portability.api import beam_fn_api_pb2
    urls = []
    for transform in descriptor.transforms.values():
        if transform.spec.urn in ("beam:runner:source:v1", "beam:runner:sink:v1"):
            url = beam_fn_api_pb2.RemoteGrpcPort.FromString(transform.spec.payload).api_service_descriptor.url
            if url and url not in urls:
                urls.append(url)
    return urls


def serve(control_url: str, worker_id: str, reason: str) -> int:
    """Answer every instruction on ``control_url`` with ``reason`` until the runner closes the stream: -> the number
    of instructions answered."""
    import grpc
    from apache_beam.portability.api import beam_fn_api_pb2, beam_fn_api_pb2_grpc
    from apache_beam.runners.worker.data_plane import GrpcClientDataChannelFactory
    from apache_beam.runners.worker.worker_id_interceptor import WorkerIdInterceptor

    channel = grpc.insecure_channel(control_url)
    grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT_S)
    stub = beam_fn_api_pb2_grpc.BeamFnControlStub(grpc.intercept_channel(channel, WorkerIdInterceptor(worker_id)))
    responses: "queue.Queue[Optional[object]]" = queue.Queue()

    def outgoing() -> Iterator[object]:
        while True:
            item = responses.get()
            if item is None:
                return
            yield item

    # a bundle's runner side waits (Beam's 3 minutes) for the worker's data stream before it reads the answer:
    # connect it first, so the runner fails the task at once, with the reason
    data = GrpcClientDataChannelFactory(worker_id=worker_id)
    described = set()
    answered = 0
    try:
        for request in stub.Control(outgoing()):
            descriptor_id = request.process_bundle.process_bundle_descriptor_id
            if request.WhichOneof("request") == "process_bundle" and descriptor_id not in described:
                described.add(descriptor_id)
                try:
                    descriptor = stub.GetProcessBundleDescriptor(
                        beam_fn_api_pb2.GetProcessBundleDescriptorRequest(process_bundle_descriptor_id=descriptor_id))
                    for url in data_urls(descriptor):
                        data.create_data_channel_from_url(url)
                except grpc.RpcError:
                    pass   # no descriptor or data service: the answer alone still fails the bundle
            responses.put(error_response(request, reason))
            answered += 1
            print(f"sdk worker pool: stand-in for {worker_id} failed instruction {request.instruction_id} "
                  f"({request.WhichOneof('request')})", flush=True)
    except grpc.RpcError:
        pass   # the runner went away: nothing is left to fail
    finally:
        responses.put(None)
        data.close()
        channel.close()
    return answered


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    serve(*args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
