package main

import (
	"github.com/sepal-fl/sepal/acme"
	"github.com/sepal-fl/sepal/internal/cli"
)

// checkAddresses refuses, as a usage error naming the flag, an address that
// no listener can take (a port out of range or missing, a host with a
// space) and two listeners on one port, before anything listens.
func checkAddresses(c *config) error {
	type listener struct{ flag, addr, example string }
	ls := []listener{
		{"--driver-api-address", c.driverAddr, "127.0.0.1:9091"},
		{"--grpc-rere-fleet-api-address", c.fleetAddr, "0.0.0.0:9092"},
	}
	if c.f129 != nil {
		ls = append(ls, listener{"--control-api-address", c.f129.controlAddr, "0.0.0.0:9093"})
		if !c.f129.sharesDriverPort(c) {
			ls = append(ls, listener{"--serverappio-api-address", c.f129.serverAppIoAddr, "127.0.0.1:9091"})
		}
	}
	if c.mode == modeACME && c.acme.challenge == acme.ChallengeHTTP01 {
		ls = append(ls, listener{"--acme-http-address", c.acme.httpAddress, ":80"})
	}
	if c.metrics != nil && c.metrics.address != "" {
		ls = append(ls, listener{"--" + metricsAddressFlag, c.metrics.address, "127.0.0.1:9100"})
	}
	for _, l := range ls {
		if err := cli.CheckListenAddress(l.flag, l.addr, l.example); err != nil {
			return err
		}
	}
	for i, a := range ls {
		for _, b := range ls[i+1:] {
			if cli.SameListenAddress(a.addr, b.addr) {
				return cli.Usagef("%s %s and %s %s take the same port: give each its own (by default the Driver API takes 9091 and the Fleet API 9092)",
					a.flag, a.addr, b.flag, b.addr)
			}
		}
	}
	return nil
}
