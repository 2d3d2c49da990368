-- Argo CD health check for the rustronaut.io kinds (Tenant, Resource, Gateway, Policy).
-- Reads the same conditions kstatus does, so Argo CD and Flux agree:
--   status.observedGeneration behind metadata.generation -> Progressing (not looked at yet)
--   Stalled=True                                         -> Degraded (needs a change by a person)
--   Ready=True                                           -> Healthy
--   Ready=False (Reconciling=True)                       -> Progressing (gets there by itself)
--   no status yet                                        -> Progressing
-- Installed by deploy/argocd/argocd-cm.yaml; tested with gopher-lua, the interpreter Argo CD
-- embeds (e2e/tools/argocd-health, operator/tests/kstatus.rs).
local hs = { status = "Progressing", message = "waiting for the rustronaut operator" }
if obj.status == nil then
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= generation then
  hs.message = "the rustronaut operator has not observed this generation yet"
  return hs
end
local ready = nil
if obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    if c.type == "Stalled" and c.status == "True" then
      hs.status = "Degraded"
      hs.message = c.reason .. ": " .. c.message
      return hs
    end
    if c.type == "Ready" then
      ready = c
    end
  end
end
if ready == nil then
  return hs
end
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message
else
  hs.message = ready.reason .. ": " .. ready.message
end
return hs
