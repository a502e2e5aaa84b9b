-- Orthanc routing to spine-node: send each stable CT series that matches the rules to the node.
--
-- The rules live in the Orthanc configuration, section "SpineNodeRouting" (orthanc/routing.json),
-- so a site changes them without editing this script; a key left out keeps the default below.
-- The decision for each series is logged on one line that names the series by its
-- SeriesInstanceUID only, never by patient data:
--   spine-node routing: series <uid> routed to <modality> (job <id>)
--   spine-node routing: series <uid> not routed: <reason>
--
-- Patterns are Lua patterns (not POSIX regular expressions: "." is any character,
-- "%d" a digit, "%." a literal dot, no "|" alternation: give several patterns instead),
-- matched against the LOWER-CASED attribute, so write them in lower case.
-- A series whose Modality is SEG or SR (what spine-node sends back) or that arrived from
-- one of ExcludeSourceAets is never routed, whatever the other rules say: no loops.

local DEFAULTS = {
  TargetModality = 'spine-node',        -- symbolic name in DicomModalities
  Modalities = { 'CT' },                -- Modality values that may be routed
  MinInstances = 20,                    -- fewer instances than this: not a volume worth segmenting
  IncludeBodyParts = {},                -- BodyPartExamined must match one of these (empty: any)
  ExcludeBodyParts = {},                -- ...and none of these
  IncludeSeriesDescriptions = {},       -- SeriesDescription must match one of these (empty: any)
  ExcludeSeriesDescriptions = { 'scout', 'localizer', 'topogram', 'surview', 'dose report' },
  MinSliceThickness = 0,                -- mm; SliceThickness of the first instance
  MaxSliceThickness = 5,                -- mm; 0 or less: no upper limit
  ExcludeSourceAets = { 'SPINENODE' },  -- calling AE titles whose series are never routed
  Asynchronous = true,                  -- C-STORE as an Orthanc job, so Lua is not blocked
}

-- Kinds of object the node itself sends back: never route them, even if listed in Modalities.
local NODE_OUTPUT_MODALITIES = { SEG = true, SR = true }

local function LoadRules()
  local rules = {}
  for key, value in pairs(DEFAULTS) do rules[key] = value end
  local section = GetOrthancConfiguration()['SpineNodeRouting']
  if type(section) == 'table' then
    for key, value in pairs(section) do
      if DEFAULTS[key] == nil then
        print('spine-node routing: unknown key SpineNodeRouting.' .. key .. ' ignored')
      else
        rules[key] = value
      end
    end
  end
  return rules
end

local RULES = LoadRules()

-- A number as a person writes it: 8 not 8.0, 2.5 as 2.5.
local function Num(value)
  return string.format('%g', value)
end

local function Contains(list, value)
  for _, item in ipairs(list) do
    if string.upper(item) == string.upper(value) then return true end
  end
  return false
end

local function MatchesAny(patterns, value)
  local lowered = string.lower(value or '')
  for _, pattern in ipairs(patterns) do
    if string.find(lowered, pattern) then return pattern end
  end
  return nil
end

-- nil if `value` passes the include/exclude patterns, else the reason it does not.
local function CheckPatterns(name, value, includeKey, excludeKey)
  if #RULES[includeKey] > 0 and not MatchesAny(RULES[includeKey], value) then
    return name .. ' "' .. (value or '') .. '" matches none of ' .. includeKey
  end
  local hit = MatchesAny(RULES[excludeKey], value)
  if hit then
    return name .. ' "' .. (value or '') .. '" matches "' .. hit .. '" in ' .. excludeKey
  end
  return nil
end

local function SourceAet(seriesId, metadata, firstInstance)
  if metadata and metadata['RemoteAET'] and metadata['RemoteAET'] ~= '' then
    return metadata['RemoteAET']
  end
  local names = ParseJson(RestApiGet('/instances/' .. firstInstance .. '/metadata'))
  if Contains(names, 'RemoteAET') then
    return RestApiGet('/instances/' .. firstInstance .. '/metadata/RemoteAET')
  end
  return ''
end

local function CheckThickness(firstInstance)
  local minimum = tonumber(RULES.MinSliceThickness) or 0
  local maximum = tonumber(RULES.MaxSliceThickness) or 0
  if minimum <= 0 and maximum <= 0 then return nil end
  local tags = ParseJson(RestApiGet('/instances/' .. firstInstance .. '/simplified-tags'))
  local thickness = tonumber(tags['SliceThickness'])
  if thickness == nil then
    return 'SliceThickness missing, required by the thickness rules'
  end
  if thickness < minimum then
    return 'SliceThickness ' .. Num(thickness) .. ' mm below MinSliceThickness ' .. Num(minimum) .. ' mm'
  end
  if maximum > 0 and thickness > maximum then
    return 'SliceThickness ' .. Num(thickness) .. ' mm above MaxSliceThickness ' .. Num(maximum) .. ' mm'
  end
  return nil
end

-- nil if the series must be routed, else the reason it is not (one line, no patient data).
local function WhyNotRouted(seriesId, tags, metadata)
  local modality = string.upper(tags['Modality'] or '')
  if NODE_OUTPUT_MODALITIES[modality] then
    return 'Modality ' .. modality .. ' is a kind spine-node sends back, never routed to it'
  end
  if not Contains(RULES.Modalities, modality) then
    return 'Modality "' .. modality .. '" not in Modalities'
  end
  local instances = ParseJson(RestApiGet('/series/' .. seriesId))['Instances']
  local minimum = tonumber(RULES.MinInstances) or 0
  if #instances < minimum then
    return #instances .. ' instances, fewer than MinInstances ' .. Num(minimum)
  end
  local source = SourceAet(seriesId, metadata, instances[1])
  if source ~= '' and Contains(RULES.ExcludeSourceAets, source) then
    return 'sent by ' .. source .. ', listed in ExcludeSourceAets'
  end
  return CheckPatterns('BodyPartExamined', tags['BodyPartExamined'],
                       'IncludeBodyParts', 'ExcludeBodyParts')
      or CheckPatterns('SeriesDescription', tags['SeriesDescription'],
                       'IncludeSeriesDescriptions', 'ExcludeSeriesDescriptions')
      or CheckThickness(instances[1])
end

local function Route(seriesId, uid)
  local request = { Resources = { seriesId }, Asynchronous = RULES.Asynchronous }
  local answer = ParseJson(RestApiPost('/modalities/' .. RULES.TargetModality .. '/store',
                                       DumpJson(request, true)))
  local job = (type(answer) == 'table' and answer['ID']) or 'synchronous'
  print('spine-node routing: series ' .. uid .. ' routed to ' .. RULES.TargetModality ..
        ' (job ' .. job .. ')')
end

function OnStableSeries(seriesId, tags, metadata)
  local uid = tags['SeriesInstanceUID'] or seriesId
  local ok, reason = pcall(WhyNotRouted, seriesId, tags, metadata)
  if not ok then
    print('spine-node routing: series ' .. uid .. ' not routed: rule check failed: ' .. tostring(reason))
  elseif reason then
    print('spine-node routing: series ' .. uid .. ' not routed: ' .. reason)
  else
    local sent, err = pcall(Route, seriesId, uid)
    if not sent then
      print('spine-node routing: series ' .. uid .. ' not routed: store to ' ..
            RULES.TargetModality .. ' failed: ' .. tostring(err))
    end
  end
end
