package controller

import (
	"fmt"
	"strings"
)

// BootstrapOneLiner is the command `flotilla token create` prints for
// installing an agent on a node. It runs nothing it has not verified: it
// fetches the controller's CA (the one unverified download), checks it
// against the hash the line carries, and only then fetches bootstrap.sh
// over TLS verified with that CA, so a man in the middle can neither serve
// another CA (the hash check fails) nor another script (the TLS handshake
// fails). The CA's temporary file goes to the script (--ca-file), which
// checks it again and removes it.
//
// It keeps the shape `… /bootstrap.sh | sh -s -- --token T --ca-hash H …`,
// so flags appended to it (--name, --labels, --timeout) reach the script.
// When that last download fails, curl writes `exit 1` (-w %{onerror}) for
// sh instead of nothing, so the line fails rather than running an empty
// script with success.
func BootstrapOneLiner(httpURL, token, caHash string) string {
	url := strings.TrimRight(httpURL, "/")
	hexHash := strings.TrimPrefix(caHash, "sha256:")
	return fmt.Sprintf(`f=$(mktemp) && curl -fsSLk -o "$f" %s/v1/ca.crt && echo "%s  $f" | sha256sum -c - && `+
		`curl -fsSL --cacert "$f" -w '%%{onerror}\nexit 1\n' %s/bootstrap.sh | sh -s -- --token %s --ca-hash %s --ca-file "$f"`,
		url, hexHash, url, token, caHash)
}
