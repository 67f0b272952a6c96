// The floor the webhook benchmark compares Phylax with: an HTTPS admission endpoint written with
// Go's standard library only, which decodes the AdmissionReview (the object kept as raw JSON, as
// client-go's RawExtension does) and allows it. Built and started by benches/webhook.rs.
package main

import (
	"encoding/json"
	"log"
	"net/http"
	"os"
)

type request struct {
	UID       string          `json:"uid"`
	Kind      map[string]any  `json:"kind"`
	Namespace string          `json:"namespace"`
	Operation string          `json:"operation"`
	UserInfo  map[string]any  `json:"userInfo"`
	Object    json.RawMessage `json:"object"`
	OldObject json.RawMessage `json:"oldObject"`
}

type review struct {
	APIVersion string    `json:"apiVersion"`
	Kind       string    `json:"kind"`
	Request    *request  `json:"request,omitempty"`
	Response   *response `json:"response,omitempty"`
}

type response struct {
	UID     string `json:"uid"`
	Allowed bool   `json:"allowed"`
}

func validate(w http.ResponseWriter, r *http.Request) {
	var in review
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 3<<20)).Decode(&in); err != nil || in.Request == nil {
		http.Error(w, "not an AdmissionReview", http.StatusBadRequest)
		return
	}
	out := review{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview",
		Response: &response{UID: in.Request.UID, Allowed: true}}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(&out)
}

func main() {
	if len(os.Args) != 4 {
		log.Fatal("usage: baseline ADDR CERT KEY")
	}
	http.HandleFunc("/validate/secret-sync", validate)
	log.Fatal(http.ListenAndServeTLS(os.Args[1], os.Args[2], os.Args[3], nil))
}
