// kstatus reads Kubernetes objects as JSON on stdin (one object, a List, or several
// documents) and prints, one JSON line per object, what sigs.k8s.io/cli-utils/pkg/kstatus
// computes for it: the status Flux, kpt and `kubectl wait --for=jsonpath` users rely on
// (Current, InProgress, Failed, ...), with its message. The project's tests use it to check
// that the operator's conditions read as intended by the real library, not by a copy of its
// rules.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	Status    string `json:"status"`
	Message   string `json:"message"`
}

func main() {
	dec := json.NewDecoder(os.Stdin)
	// Numbers as int64 where they are integers: unstructured accessors insist on it.
	dec.UseNumber()
	out := json.NewEncoder(os.Stdout)
	for {
		var obj map[string]interface{}
		if err := dec.Decode(&obj); err == io.EOF {
			return
		} else if err != nil {
			fmt.Fprintf(os.Stderr, "kstatus: reading JSON: %v\n", err)
			os.Exit(2)
		}
		obj = numbers(obj).(map[string]interface{})
		items := []interface{}{obj}
		if list, ok := obj["items"].([]interface{}); ok {
			items = list
		}
		for _, it := range items {
			m, ok := it.(map[string]interface{})
			if !ok {
				fmt.Fprintln(os.Stderr, "kstatus: an item is not an object")
				os.Exit(2)
			}
			u := &unstructured.Unstructured{Object: m}
			res, err := status.Compute(u)
			if err != nil {
				fmt.Fprintf(os.Stderr, "kstatus: %s %s/%s: %v\n", u.GetKind(), u.GetNamespace(), u.GetName(), err)
				os.Exit(1)
			}
			if err := out.Encode(verdict{u.GetKind(), u.GetNamespace(), u.GetName(), res.Status.String(), res.Message}); err != nil {
				fmt.Fprintf(os.Stderr, "kstatus: %v\n", err)
				os.Exit(2)
			}
		}
	}
}

// numbers turns every json.Number in v into an int64, or a float64 when it is not an integer.
func numbers(v interface{}) interface{} {
	switch t := v.(type) {
	case map[string]interface{}:
		for k, e := range t {
			t[k] = numbers(e)
		}
		return t
	case []interface{}:
		for i, e := range t {
			t[i] = numbers(e)
		}
		return t
	case json.Number:
		if i, err := t.Int64(); err == nil {
			return i
		}
		f, _ := t.Float64()
		return f
	default:
		return v
	}
}
