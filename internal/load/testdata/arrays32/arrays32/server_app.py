"""arrays32: FedAvg of one float32 array of array-mib MiB, training only.

After each round it prints the aggregated array's type, size and mean,
which is the round's number when every array made the trip whole.
"""

import numpy as np
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


class Float32FedAvg(FedAvg):
    """FedAvg that keeps the model float32 and says what it aggregated."""

    def aggregate_train(self, server_round, replies):
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is not None:
            a = arrays.to_numpy_ndarrays()[0].astype(np.float32)
            print(f"arrays32 round {server_round}: {a.dtype} {a.nbytes} bytes, mean {float(a.mean())}", flush=True)
            arrays = ArrayRecord([a])
        return arrays, metrics


@app.main()
def main(grid: Grid, context: Context) -> None:
    num_rounds = int(context.run_config["num-server-rounds"])
    n = int(context.run_config["array-mib"]) * (1 << 20) // 4
    strategy = Float32FedAvg(fraction_evaluate=0.0)
    strategy.start(grid=grid, initial_arrays=ArrayRecord([np.zeros(n, dtype=np.float32)]), num_rounds=num_rounds)
