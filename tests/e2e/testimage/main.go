// A tiny static HTTP server for the e2e tests: an image we can build without a registry.
//
//	GET /         -> "hello from <hostname>"
//	GET /healthz  -> "ok"
//	GET /apicheck -> the API server's answer to a SelfSubjectReview made with the pod's
//	                 ServiceAccount token via the `kubernetes` Service (what in-cluster clients do)
//
// With arguments it is a one-shot client instead (see clientMain).
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

const saDir = "/var/run/secrets/kubernetes.io/serviceaccount"

type apiCheck struct {
	URL      string `json:"url"`
	Status   int    `json:"status"`
	Username string `json:"username,omitempty"`
	Error    string `json:"error,omitempty"`
}

func checkAPI() apiCheck {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	url := "https://" + net.JoinHostPort(host, port) + "/apis/authentication.k8s.io/v1/selfsubjectreviews"
	out := apiCheck{URL: url}
	token, err := os.ReadFile(saDir + "/token")
	if err != nil {
		out.Error = err.Error()
		return out
	}
	caPEM, err := os.ReadFile(saDir + "/ca.crt")
	if err != nil {
		out.Error = err.Error()
		return out
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	client := &http.Client{Timeout: 5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	body := `{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}`
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		out.Error = err.Error()
		return out
	}
	defer resp.Body.Close()
	out.Status = resp.StatusCode
	raw, _ := io.ReadAll(resp.Body)
	var review struct {
		Status struct {
			UserInfo struct {
				Username string `json:"username"`
			} `json:"userInfo"`
		} `json:"status"`
	}
	if json.Unmarshal(raw, &review) == nil {
		out.Username = review.Status.UserInfo.Username
	}
	return out
}

// clientMain runs the binary as a one-shot client, for `kubectl exec POD -- /app get URL`
// or `/app apicheck` (the image has no shell or curl).
func clientMain(args []string) int {
	switch {
	case len(args) == 1 && args[0] == "apicheck":
		_ = json.NewEncoder(os.Stdout).Encode(checkAPI())
		return 0
	case len(args) == 2 && args[0] == "get":
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer resp.Body.Close()
		_, _ = io.Copy(os.Stdout, resp.Body)
		return 0
	}
	fmt.Fprintln(os.Stderr, "usage: app [apicheck | get URL]")
	return 2
}

func main() {
	if len(os.Args) > 1 {
		os.Exit(clientMain(os.Args[1:]))
	}
	addr := ":8080"
	if v := os.Getenv("LISTEN"); v != "" {
		addr = v
	}
	hostname, _ := os.Hostname()
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		log.Printf("request %s %s from %s", r.Method, r.URL.Path, r.RemoteAddr)
		fmt.Fprintf(w, "hello from %s\n", hostname)
	})
	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	http.HandleFunc("/apicheck", func(w http.ResponseWriter, r *http.Request) {
		result := checkAPI()
		log.Printf("apicheck %s -> %d %s %s", result.URL, result.Status, result.Username, result.Error)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(result)
	})
	log.Printf("e2e test server listening on %s as uid %d", addr, os.Getuid())
	log.Fatal(http.ListenAndServe(addr, nil))
}
