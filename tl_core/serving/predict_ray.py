"""jobs.predict on a Ray cluster: Ray Data `map_batches` runs tl_core.serving.predict.predict_encoded in
`concurrency` actors (one per GPU with use_gpu), each loading the model once."""
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from tl_core import interrupts, ray_session, storage, worker_env
from tl_core.serving.evaluate import ExportedModel
from tl_core.serving.predict import ParquetFiles, output_schema, predict_encoded, read_file


class Predictor:
    def __init__(self, model_path: str, batch_size: int):
        interrupts.drop_exit_signals_in_callbacks()
        self.model = ExportedModel(model_path)
        self.batch_size = batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        names = batch.column("path").to_pylist()
        if "image" in batch.column_names:
            encoded, errors = batch.column("image").to_pylist(), [None] * len(names)
        else:
            encoded, errors = map(list, zip(*map(read_file, names))) if names else ([], [])
        columns = predict_encoded(self.model, names, encoded, errors, self.batch_size)
        return pa.table(columns, schema=output_schema(self.model.class_names))


def predict_on_ray(model_path, inputs: list, output, *, batch_size: int = 64, chunk_size: int = 1024,
                   concurrency: int = 2, use_gpu: bool = False) -> dict:
    """Predict every input on the cluster; Ray writes output/*.parquet. Returns counts of rows and errors. model_path
    and output: paths every node reaches, or URIs (each actor copies the model for itself)."""
    ray_session.connect()
    ray_session.require([{"CPU": 1, "GPU": 1 if use_gpu else 0}] * concurrency, f"prediction by {concurrency} model replicas")
    if isinstance(inputs, ParquetFiles):
        dataset = ray.data.read_parquet(list(inputs))
        if "path" not in dataset.columns():
            raise ValueError("Parquet input for --ray needs a path column (as jobs.ingest writes)")
    else:
        dataset = ray.data.from_items([{"path": path} for path in inputs])
    predictions = dataset.map_batches(
        Predictor, fn_constructor_args=(str(model_path), batch_size), batch_size=chunk_size,
        batch_format="pyarrow", concurrency=concurrency, num_gpus=1 if use_gpu else 0,
        runtime_env={"env_vars": worker_env()})
    # A URI's file system carries no credential (each node takes its own): Ray may send it to its tasks.
    filesystem, path = storage.resolve(output)
    predictions.write_parquet(path, filesystem=filesystem)
    errors = pq.read_table(path, filesystem=filesystem, columns=["error"]).column("error")
    return {"rows": len(errors), "errors": len(errors) - errors.null_count, "output": str(output)}
