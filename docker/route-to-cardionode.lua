-- Auto-routing: forward cardiac source images to CardioNode.
-- Only NM, PT and MR are forwarded; the node's own results (SR, OT/SC, DOC)
-- are stored in the PACS and never sent back.
function OnStoredInstance(instanceId, tags, metadata, origin)
  local modality = tags['Modality']
  if modality == 'NM' or modality == 'PT' or modality == 'MR' then
    SendToModality(instanceId, 'cardionode')
  end
end
