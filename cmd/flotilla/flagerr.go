package main

import (
	"errors"
	"fmt"
)

// optionError is what agent.OptionError and plane.OptionError have in
// common: the library names its Options field, the CLI names the flag.
type optionError interface {
	error
	OptionName() string
}

// withFlag puts the flag that sets a library option in front of an error
// about that option; flagOf maps an Options field name to its flag ("": none).
func withFlag(err error, flagOf func(option string) string) error {
	var oe optionError
	if errors.As(err, &oe) {
		if flag := flagOf(oe.OptionName()); flag != "" {
			return fmt.Errorf("%s: %w", flag, err)
		}
	}
	return err
}

// agentFlag is the `flotilla agent` flag of an agent.Options field.
func agentFlag(option string) string {
	switch option {
	case "Controller", "Token", "Name", "Labels", "Root":
		return "--" + lower(option)
	case "CAHash":
		return "--ca-hash"
	case "CAFile":
		return "--ca-file"
	case "DataDir":
		return "--data-dir"
	case "HeartbeatInterval":
		return "--heartbeat-interval"
	case "MaxClockSkew":
		return "--max-clock-skew"
	}
	return ""
}

// controllerFlag is the `flotilla controller` flag of a controller.Options field.
func controllerFlag(option string) string {
	switch option {
	case "DataDir":
		return "--data-dir"
	case "Listen":
		return "--listen"
	case "HTTPListen":
		return "--http-listen"
	case "Advertise":
		return "--advertise"
	case "NATSURLs":
		return "--nats-url"
	case "NATSCreds":
		return "--nats-creds"
	case "NATSAccountKey":
		return "--nats-account-key"
	case "NATSCA":
		return "--nats-ca"
	case "NATSOperatorKey":
		return "--nats-operator-key"
	case "NATSAccountJWT":
		return "--nats-account-jwt"
	case "NATSSysCreds":
		return "--nats-sys-creds"
	case "NATSUserTTL":
		return "--nats-user-ttl"
	case "NATSAdminTTL":
		return "--nats-admin-ttl"
	case "Replicas":
		return "--replicas"
	case "HA":
		return "--ha"
	}
	return ""
}

// localAgentFlag is the `flotilla controller --with-local-agent` flag of an
// agent.Options field.
func localAgentFlag(option string) string {
	switch option {
	case "Name":
		return "--agent-name"
	case "Labels":
		return "--agent-labels"
	case "HeartbeatInterval":
		return "--heartbeat-interval"
	}
	return ""
}

func lower(s string) string {
	if s == "" {
		return s
	}
	return string(s[0]|0x20) + s[1:]
}
