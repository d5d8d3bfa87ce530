"""A Flower 1.8.0 ClientApp for Sepal's end-to-end tests.

Its model is one float32 array; training adds 1 to every value, so that
after round r of FedAvg every value is exactly r, whichever nodes took
part, and evaluating reports that value as the loss. Each fit prints
"sepal-test: fit done round R" (flushed) just before its result is sent,
for the test to act on.
"""

import os

import numpy as np

import flwr as fl

SIZE = int(os.environ.get("SEPAL_TEST_MODEL_FLOATS", "262144"))


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
