"""A numpy ClientApp for Flower 1.8.0, run by Sepal's end-to-end tests.

`flower-client-app client:app --dir THIS_FOLDER ...`: its model is one
float32 array of SEPAL_MODEL_FLOATS values (default 4); training adds 1
to every value, so that after round r of FedAvg every value is exactly r,
whichever nodes took part, and evaluating reports that value as the loss.
Each fit prints "sepal-test: fit done round R" (flushed) just before its
result is sent, for a test to act on.
"""

import os

import flwr as fl
import numpy as np

SIZE = int(os.environ.get("SEPAL_MODEL_FLOATS", "4"))


class AddOne(fl.client.NumPyClient):
    def get_parameters(self, config):
        return [np.zeros(SIZE, dtype=np.float32)]

    def fit(self, parameters, config):
        out = [parameters[0] + np.float32(1)]
        print(f"sepal-test: fit done round {config.get('server_round', 0)}", flush=True)
        return out, 1, {}

    def evaluate(self, parameters, config):
        return float(parameters[0][0]), 1, {}


def client_fn(cid: str):
    return AddOne().to_client()


app = fl.client.ClientApp(client_fn=client_fn)
