-- Argo CD health check for modeldeploy.io/ModelDeployment.
--
-- Argo CD runs this with `obj` set to the live object and only the base, table and a safe os
-- library loaded (no string or math library), so the script uses `..`, tostring and tonumber only.
-- Every field may be missing: the operator may not have written status yet, or may be older.
--
-- Result, first match wins:
--   Progressing  no status yet, or status.observedGeneration < metadata.generation
--   Degraded     phase Failed or Degraded; a canary RolledBack whose revision is still wanted;
--                status.failedRevision equal to status.canaryRevision, or ModelLoaded False
--   Suspended    status.canary.phase Paused
--   Progressing  phase Pending, Loading or Progressing, or a canary live (Validating,
--                Progressing, Promoting, RollingBack)
--   Healthy      phase Ready with the Ready condition True, phase ScaledToZero (idle, the activator
--                answers the next request), or Pending because replicas is 0
--
-- The source of truth is charts/modeldeploy/argocd/health.lua; docs/argocd-health.yaml is
-- generated from it by hack/gen_argocd_snippet.py.

local hs = {}

local function nonempty(s)
  return s ~= nil and s ~= "" and tostring(s) or nil
end

local function condition(status, ctype)
  if status == nil or status.conditions == nil then
    return nil
  end
  if type(status.conditions) ~= "table" then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if type(c) == "table" and c.type == ctype then
      return c
    end
  end
  return nil
end

local function condIs(c, value)
  return c ~= nil and c.status == value
end

local function condMessage(c)
  if c == nil then
    return nil
  end
  return nonempty(c.message)
end

-- The number of spec.rollout.steps, for "step 1/2"; nil when unknown.
local function stepCount()
  if type(obj.spec) ~= "table" or type(obj.spec.rollout) ~= "table" or type(obj.spec.rollout.steps) ~= "table" then
    return nil
  end
  local n = #obj.spec.rollout.steps
  if n == 0 then
    return nil
  end
  return n
end

local function canaryText(canary)
  local text = "Canary"
  local rev = nonempty(canary.revision)
  if rev ~= nil then
    text = text .. " " .. rev
  end
  return text
end

local function stepText(canary)
  local parts = nil
  local step = tonumber(canary.step)
  if step ~= nil then
    parts = "step " .. tostring(step + 1)
    local n = stepCount()
    if n ~= nil then
      parts = parts .. "/" .. tostring(n)
    end
  end
  local weight = tonumber(canary.weight)
  if weight ~= nil then
    weight = weight + 0.5
    weight = weight - weight % 1
    local w = "weight " .. tostring(weight) .. "%"
    if parts == nil then
      parts = w
    else
      parts = parts .. ", " .. w
    end
  end
  return parts
end

-- The reason of the most recent canary analysis, or nil.
local function lastAnalysis(canary)
  local analyses = canary.analyses
  if type(analyses) ~= "table" or #analyses == 0 or type(analyses[#analyses]) ~= "table" then
    return nil
  end
  local reason = nonempty(analyses[#analyses].reason)
  if reason == nil then
    return nil
  end
  return "last analysis: " .. reason
end

-- "Canary abc: step 1/2, weight 10%: <why>", from status.canary.
local function canaryMessage(canary)
  local phase = canary.phase
  local text = canaryText(canary)
  local where = stepText(canary)
  local why = nonempty(canary.message)
  if phase == "Validating" then
    text = text .. ": validating before live traffic"
  elseif phase == "Paused" then
    text = text .. ": paused"
    if where ~= nil then
      text = text .. " at " .. where
    end
  elseif phase == "Promoting" then
    text = text .. ": promoting"
    if where ~= nil then
      text = text .. ", " .. where
    end
  elseif phase == "RollingBack" then
    text = text .. ": rolling back"
  elseif phase == "RolledBack" then
    text = text .. ": rolled back"
  else
    if where ~= nil then
      text = text .. ": " .. where
    end
  end
  if why ~= nil then
    return text .. ": " .. why
  end
  if phase == "Progressing" then
    local last = lastAnalysis(canary)
    if last ~= nil then
      return text .. ", " .. last
    end
  end
  return text
end

local status = obj.status
if type(status) ~= "table" or (status.phase == nil and status.observedGeneration == nil) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

local generation = nil
if type(obj.metadata) == "table" then
  generation = tonumber(obj.metadata.generation)
end
local observed = tonumber(status.observedGeneration)
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  if observed ~= nil then
    hs.message = hs.message .. " (status is for generation " .. tostring(observed) .. ")"
  end
  return hs
end

local phase = status.phase
local canary = status.canary
local canaryPhase = nil
if type(canary) == "table" then
  canaryPhase = canary.phase
else
  canary = nil
end
local ready = condition(status, "Ready")
local loaded = condition(status, "ModelLoaded")
local progressing = condition(status, "Progressing")
local degraded = condition(status, "Degraded")
local failedRevision = nonempty(status.failedRevision)

-- A RolledBack canary stays in status.canary after the spec went back to the stable revision;
-- it is Degraded only while the rolled-back revision is still the one asked for (the operator
-- then reports ModelLoaded not True).
local rolledBack = canaryPhase == "RolledBack" and not condIs(loaded, "True")
local failedWanted = failedRevision ~= nil
  and (failedRevision == nonempty(status.canaryRevision) or condIs(loaded, "False"))

if phase == "Failed" or phase == "Degraded" or rolledBack or failedWanted then
  local msg = nil
  if condIs(degraded, "True") then
    msg = condMessage(degraded)
  end
  if msg == nil and condIs(loaded, "False") then
    msg = condMessage(loaded)
  end
  if msg == nil then
    msg = nonempty(status.message)
  end
  if msg == nil and canary ~= nil then
    msg = nonempty(canary.message)
  end
  if msg == nil then
    msg = "phase " .. tostring(phase)
  end
  if rolledBack then
    msg = canaryText(canary) .. " rolled back: " .. msg
  end
  hs.status = "Degraded"
  hs.message = msg
  return hs
end

if canaryPhase == "Paused" then
  hs.status = "Suspended"
  hs.message = canaryMessage(canary)
  return hs
end

local live = canaryPhase == "Validating" or canaryPhase == "Progressing"
  or canaryPhase == "Promoting" or canaryPhase == "RollingBack"
if live then
  hs.status = "Progressing"
  hs.message = canaryMessage(canary)
  return hs
end

if phase == "ScaledToZero" then
  hs.status = "Healthy"
  hs.message = condMessage(ready) or "scaled to zero"
  return hs
end

if phase == "Pending" and ready ~= nil and ready.reason == "ScaledToZero" then
  hs.status = "Healthy"
  hs.message = condMessage(ready) or "replicas is 0"
  return hs
end

if phase == "Pending" or phase == "Loading" or phase == "Progressing" then
  hs.status = "Progressing"
  local msg = nil
  if condIs(progressing, "True") then
    msg = condMessage(progressing)
  end
  if msg == nil and phase == "Loading" then
    msg = condMessage(loaded)
  end
  hs.message = msg or nonempty(status.message) or condMessage(ready) or ("phase " .. tostring(phase))
  return hs
end

if phase == "Ready" and condIs(ready, "True") then
  hs.status = "Healthy"
  local msg = condMessage(ready) or nonempty(status.message) or "Ready"
  local stable = nonempty(status.stableRevision)
  if stable ~= nil then
    msg = msg .. " (revision " .. stable .. ")"
  end
  hs.message = msg
  return hs
end

hs.status = "Progressing"
hs.message = condMessage(ready) or nonempty(status.message) or ("phase " .. tostring(phase))
return hs
