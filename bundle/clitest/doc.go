// Package clitest drives the flotilla binary's image commands end to end (build,
// inspect, images, tag, rmi, push, pull, login, logout, save, load) against a real registry.
package clitest
