// argocd-health runs an Argo CD resource health check (Lua, the `resource_customizations`
// format) on Kubernetes objects the way Argo CD does: gopher-lua, the interpreter Argo CD
// embeds, with the libraries Argo CD opens for health scripts (package, base, table; no os,
// io or string), the object as the global `obj` converted value by value as Argo CD's
// util/lua decodeValue does, a one-second deadline, and the returned table's status checked
// against Argo CD's health codes. Objects come as JSON on stdin (one object, a List, or
// several documents); one JSON line per object is printed.
//
// Usage: argocd-health SCRIPT.lua < objects.json
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
)

type verdict struct {
	Kind    string `json:"kind"`
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

// The health codes Argo CD accepts; anything else becomes Unknown.
var codes = map[string]bool{
	"Healthy": true, "Progressing": true, "Degraded": true,
	"Suspended": true, "Missing": true, "Unknown": true,
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: argocd-health SCRIPT.lua < objects.json")
		os.Exit(2)
	}
	script, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintf(os.Stderr, "argocd-health: %v\n", err)
		os.Exit(2)
	}
	dec := json.NewDecoder(os.Stdin)
	out := json.NewEncoder(os.Stdout)
	for {
		var doc map[string]interface{}
		if err := dec.Decode(&doc); err == io.EOF {
			return
		} else if err != nil {
			fmt.Fprintf(os.Stderr, "argocd-health: reading JSON: %v\n", err)
			os.Exit(2)
		}
		items := []interface{}{doc}
		if list, ok := doc["items"].([]interface{}); ok {
			items = list
		}
		for _, it := range items {
			obj, _ := it.(map[string]interface{})
			status, message, err := run(string(script), obj)
			if err != nil {
				fmt.Fprintf(os.Stderr, "argocd-health: %v\n", err)
				os.Exit(1)
			}
			meta, _ := obj["metadata"].(map[string]interface{})
			kind, _ := obj["kind"].(string)
			name, _ := meta["name"].(string)
			if err := out.Encode(verdict{kind, name, status, message}); err != nil {
				os.Exit(2)
			}
		}
	}
}

func run(script string, obj map[string]interface{}) (string, string, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			return "", "", err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", decode(l, obj))
	if err := l.DoString(script); err != nil {
		return "", "", err
	}
	ret, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return "", "", fmt.Errorf("the script returned %s, not a table", l.Get(-1).Type())
	}
	status := lua.LVAsString(ret.RawGetString("status"))
	message := lua.LVAsString(ret.RawGetString("message"))
	if !codes[status] {
		return "Unknown", "invalid health status", nil
	}
	return status, message, nil
}

// decode converts a JSON value to Lua as Argo CD's util/lua decodeValue does.
func decode(l *lua.LState, v interface{}) lua.LValue {
	switch t := v.(type) {
	case float64:
		return lua.LNumber(t)
	case int64:
		return lua.LNumber(t)
	case string:
		return lua.LString(t)
	case bool:
		return lua.LBool(t)
	case []interface{}:
		arr := l.CreateTable(len(t), 0)
		for _, e := range t {
			arr.Append(decode(l, e))
		}
		return arr
	case map[string]interface{}:
		tbl := l.CreateTable(0, len(t))
		for k, e := range t {
			tbl.RawSetH(lua.LString(k), decode(l, e))
		}
		return tbl
	}
	return lua.LNil
}
